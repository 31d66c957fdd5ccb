-- Payloads of a few KiB and more live in the payload log beside the journal (`journal.payloads/`, see
-- src/store/payload_log.rs): written once, instead of into SQLite's log and again into the file at checkpoint.
-- Such a row's `payload` is empty and these say where the bytes are: the offset in the segment that holds the
-- row's id, the length, and the CRC-32 checked when it is read. NULL for a payload kept in the row, as every
-- row written before this migration is.
ALTER TABLE messages ADD COLUMN payload_at INTEGER;
ALTER TABLE messages ADD COLUMN payload_len INTEGER;
ALTER TABLE messages ADD COLUMN payload_crc INTEGER;
