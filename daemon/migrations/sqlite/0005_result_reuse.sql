-- Reuse by content. `result_key`: what the job's result depends on (see morag-protocol's
-- `reuse` module); a new job whose key matches a completed job's takes that result
-- (`reused_from`), one matching a job still in flight follows it (`joined_to`) and completes
-- with it. `reuse = 0`: the job asked to run again whatever matches.
ALTER TABLE jobs ADD COLUMN result_key TEXT;
ALTER TABLE jobs ADD COLUMN reuse BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN reused_from TEXT;
ALTER TABLE jobs ADD COLUMN joined_to TEXT;
CREATE INDEX jobs_result_key ON jobs (result_key, state);
CREATE INDEX jobs_joined_to ON jobs (joined_to);

-- What each agent's results depend on (its registration's profile, JSON).
ALTER TABLE agents ADD COLUMN profile TEXT;

-- Live transcripts are `segment` events, dropped when their attempt ends (and a while after it
-- completes): found by job without reading every event.
CREATE INDEX job_events_segments ON job_events (job_id) WHERE kind = 'segment';
