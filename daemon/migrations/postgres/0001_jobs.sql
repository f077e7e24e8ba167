-- Jobs, their attempts, artifacts and events; agents; join tokens.
-- The same tables as the embedded store's 0001 (migrations/sqlite), in PostgreSQL's types: times
-- are ms since the Unix epoch in BIGINT, flags are BIGINT 0/1, documents are JSON text, and
-- every integer is BIGINT so the one set of statements reads the same types from both.

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority BIGINT NOT NULL,
    gpu TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    input_name TEXT NOT NULL,
    input_size BIGINT NOT NULL,
    source_path TEXT,
    options TEXT NOT NULL,
    external_ref TEXT,
    deadline_ms BIGINT,
    max_attempts BIGINT NOT NULL,
    attempt_count BIGINT NOT NULL DEFAULT 0,
    current_attempt TEXT,
    cancel_requested_ms BIGINT,
    progress_percent DOUBLE PRECISION,
    progress_stage TEXT,
    progress_message TEXT,
    progress_eta_ms BIGINT,
    result TEXT,
    error TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    not_before_ms BIGINT NOT NULL
);
CREATE INDEX jobs_dispatch ON jobs (state, priority DESC, created_ms, id);
CREATE INDEX jobs_external ON jobs (external_ref);

CREATE TABLE attempts (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    agent_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    dispatched_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    outcome TEXT NOT NULL,
    error TEXT
);
CREATE INDEX attempts_job ON attempts (job_id, number);
CREATE INDEX attempts_outcome ON attempts (outcome, agent_id);

CREATE TABLE artifacts (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    size BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE INDEX artifacts_hash ON artifacts (hash);

CREATE TABLE job_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    capability TEXT NOT NULL,
    queues TEXT NOT NULL,
    hardware TEXT NOT NULL,
    hostname TEXT NOT NULL,
    address TEXT,
    max_concurrent BIGINT NOT NULL,
    content_types TEXT NOT NULL,
    version TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    drained BIGINT NOT NULL DEFAULT 0,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    used_ms BIGINT,
    used_by TEXT
);
