-- Switchboard schema for the embedded SQLite store. Ids come from INTEGER PRIMARY KEY
-- AUTOINCREMENT (never reused); times are Unix ms.
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);

-- pair_key is "lo:hi" for one-to-one conversations, NULL for larger groups.
CREATE TABLE IF NOT EXISTS `groups` (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    created_by    INTEGER NOT NULL REFERENCES users (id),
    pair_key      TEXT    UNIQUE,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS group_members (
    group_id INTEGER NOT NULL REFERENCES `groups` (id),
    user_id  INTEGER NOT NULL REFERENCES users (id),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX IF NOT EXISTS ix_members_user ON group_members (user_id, group_id);

CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id      INTEGER NOT NULL REFERENCES `groups` (id),
    sender_id     INTEGER NOT NULL,
    content       TEXT    NOT NULL,
    sent_at_ms    INTEGER NOT NULL,
    client_msg_id TEXT,
    UNIQUE (sender_id, client_msg_id)
);
CREATE INDEX IF NOT EXISTS ix_messages_group ON messages (group_id, id);

CREATE TABLE IF NOT EXISTS inbox (
    user_id       INTEGER NOT NULL,
    message_id    INTEGER NOT NULL,
    group_id      INTEGER NOT NULL,
    sender_id     INTEGER NOT NULL,
    content       TEXT    NOT NULL,
    sent_at_ms    INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX IF NOT EXISTS ix_inbox_message ON inbox (message_id);
CREATE INDEX IF NOT EXISTS ix_inbox_expiry ON inbox (expires_at_ms);
