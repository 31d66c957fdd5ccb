-- The MQTT 5 properties of the durable wills (of `sessions` and `presence`), so that a will published after an
-- unclean stop carries what the client gave: the same columns as `messages`. The expiry is the interval as given
-- in the CONNECT: it counts from the will's publication.
ALTER TABLE sessions ADD COLUMN will_payload_format INTEGER;
ALTER TABLE sessions ADD COLUMN will_expiry INTEGER;
ALTER TABLE sessions ADD COLUMN will_content_type TEXT;
ALTER TABLE sessions ADD COLUMN will_response_topic TEXT;
ALTER TABLE sessions ADD COLUMN will_correlation_data BLOB;
ALTER TABLE sessions ADD COLUMN will_user_properties TEXT;   -- JSON array of [key, value] pairs, NULL when none

ALTER TABLE presence ADD COLUMN will_payload_format INTEGER;
ALTER TABLE presence ADD COLUMN will_expiry INTEGER;
ALTER TABLE presence ADD COLUMN will_content_type TEXT;
ALTER TABLE presence ADD COLUMN will_response_topic TEXT;
ALTER TABLE presence ADD COLUMN will_correlation_data BLOB;
ALTER TABLE presence ADD COLUMN will_user_properties TEXT;
