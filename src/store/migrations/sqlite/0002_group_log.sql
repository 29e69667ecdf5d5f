-- Delivery by group log and positions (docs/delivery.md): every message gets a gap-free
-- sequence number in its group, each group remembers its last one, and each member's
-- delivery position replaces the per-recipient inbox rows.
ALTER TABLE `groups` ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;

UPDATE messages SET seq = (SELECT COUNT(*) FROM messages m WHERE m.group_id = messages.group_id AND m.id <= messages.id);
UPDATE `groups` SET last_seq = (SELECT COALESCE(MAX(seq), 0) FROM messages m WHERE m.group_id = `groups`.id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_messages_seq ON messages (group_id, seq);

-- A member's position: every message of the group up to `seq` reached them. No row means 0.
CREATE TABLE IF NOT EXISTS positions (
    user_id  INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (user_id, group_id)
) WITHOUT ROWID;

-- Members keep what their inbox still held: their position stops below the oldest entry.
INSERT INTO positions (user_id, group_id, seq)
SELECT gm.user_id, gm.group_id,
       COALESCE((SELECT MIN(m.seq) - 1 FROM inbox i JOIN messages m ON m.id = i.message_id
                 WHERE i.user_id = gm.user_id AND i.group_id = gm.group_id), g.last_seq)
FROM group_members gm JOIN `groups` g ON g.id = gm.group_id;

DROP TABLE inbox;
