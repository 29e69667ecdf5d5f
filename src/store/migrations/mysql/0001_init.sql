-- Switchboard schema for MySQL / MariaDB. Ids come from AUTO_INCREMENT; times are Unix ms.
CREATE TABLE IF NOT EXISTS users (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username      VARCHAR(64)  NOT NULL,
    created_at_ms BIGINT       NOT NULL,
    UNIQUE KEY uq_users_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- pair_key is "lo:hi" for one-to-one conversations, NULL for larger groups. Its unique key is
-- what makes two racing create_group calls for the same pair return one group.
CREATE TABLE IF NOT EXISTS `groups` (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name          VARCHAR(128) NOT NULL,
    created_by    BIGINT       NOT NULL,
    pair_key      VARCHAR(48)  NULL,
    created_at_ms BIGINT       NOT NULL,
    UNIQUE KEY uq_groups_pair (pair_key),
    CONSTRAINT fk_groups_creator FOREIGN KEY (created_by) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS group_members (
    group_id BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY ix_members_user (user_id, group_id),
    CONSTRAINT fk_members_group FOREIGN KEY (group_id) REFERENCES `groups` (id),
    CONSTRAINT fk_members_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB;

-- (sender_id, client_msg_id) makes a retried send idempotent; NULLs never collide.
CREATE TABLE IF NOT EXISTS messages (
    id            BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    group_id      BIGINT      NOT NULL,
    sender_id     BIGINT      NOT NULL,
    content       MEDIUMTEXT  NOT NULL,
    sent_at_ms    BIGINT      NOT NULL,
    client_msg_id VARCHAR(64) NULL,
    KEY ix_messages_group (group_id, id),
    UNIQUE KEY uq_messages_client (sender_id, client_msg_id),
    CONSTRAINT fk_messages_group FOREIGN KEY (group_id) REFERENCES `groups` (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The SQL offline inbox: one self-contained pending entry per recipient and message.
CREATE TABLE IF NOT EXISTS inbox (
    user_id       BIGINT     NOT NULL,
    message_id    BIGINT     NOT NULL,
    group_id      BIGINT     NOT NULL,
    sender_id     BIGINT     NOT NULL,
    content       MEDIUMTEXT NOT NULL,
    sent_at_ms    BIGINT     NOT NULL,
    expires_at_ms BIGINT     NOT NULL,
    PRIMARY KEY (user_id, message_id),
    KEY ix_inbox_message (message_id),
    KEY ix_inbox_expiry (expires_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
