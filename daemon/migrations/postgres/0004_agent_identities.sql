-- Agent ids and certificates the hub issued or met: an id is given out once (a join token made
-- with `--replace ID` may issue it again, revoking the old certificate); a revoked serial is
-- refused by every hub sharing the database.
ALTER TABLE join_tokens ADD COLUMN replace_agent TEXT;

CREATE TABLE agent_ids (
    agent_id TEXT PRIMARY KEY,
    issued_ms BIGINT NOT NULL,
    -- Revoked (`morag-hub revoke`): certificates of this id the hub has not met before are
    -- refused too.
    revoked_ms BIGINT
);

CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    issued_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX certificates_agent ON certificates (agent_id);

-- Ids in use before this table existed.
INSERT INTO agent_ids (agent_id, issued_ms) SELECT id, first_seen_ms FROM agents
    ON CONFLICT DO NOTHING;
INSERT INTO agent_ids (agent_id, issued_ms)
    SELECT used_by, used_ms FROM join_tokens WHERE used_by IS NOT NULL AND used_ms IS NOT NULL
    ON CONFLICT DO NOTHING;

-- What each agent may serve (see the hub's `policy` module): set with the join token or later;
-- registrations are clipped to it. The agent's own claims are kept beside the clipped values.
ALTER TABLE join_tokens ADD COLUMN policy TEXT;
ALTER TABLE agents ADD COLUMN claimed TEXT;
CREATE TABLE agent_policies (
    agent_id TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Agents registered before policies existed keep what they last registered with (the default
-- policy would narrow custom queues and concurrency).
INSERT INTO agent_policies (agent_id, policy, updated_ms)
    SELECT id, json_build_object('queues', queues::json, 'content_types', content_types::json, 'max_concurrent', max_concurrent)::text, last_seen_ms FROM agents;
