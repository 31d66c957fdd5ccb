-- The user a persistent session belongs to, so that its restored subscriptions are still checked against the
-- access rules for that user.
ALTER TABLE sessions ADD COLUMN username TEXT;
