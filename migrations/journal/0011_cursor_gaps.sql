-- A durable consumer's gaps: journal ids the hard cap removed before it read them. Kept with its cursor, so that
-- the count and the last gap survive a restart, and go when the consumer (a deleted Kafka route) does.
ALTER TABLE cursors ADD COLUMN gap_total INTEGER NOT NULL DEFAULT 0;  -- journal ids lost, in all
ALTER TABLE cursors ADD COLUMN gap_from  INTEGER;                    -- the last gap: its first journal id,
ALTER TABLE cursors ADD COLUMN gap_to    INTEGER;                    -- its last,
ALTER TABLE cursors ADD COLUMN gap_at    INTEGER;                    -- and when it was found (unix ms)
