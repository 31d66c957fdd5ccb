-- A session queue holds at most `max_queued_messages` QoS 1/2 deliveries in memory. Those beyond are "spilled":
-- they wait here only (for any session, persistent or not) and are read back in queue order as the subscriber
-- catches up, so that a slow or offline subscriber costs disk rather than memory or loss.
ALTER TABLE session_messages ADD COLUMN spilled INTEGER NOT NULL DEFAULT 0;
CREATE INDEX session_messages_spilled ON session_messages (client_id, spilled, seq);
