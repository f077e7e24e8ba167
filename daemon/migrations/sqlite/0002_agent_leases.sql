-- Which hub holds an agent's session, and until when: the agent's attempts are alive while its
-- lease is. Its hub renews the lease; when the agent (or the hub) is gone, the lease runs out
-- and any hub re-dispatches the attempts. NULL: never held (rows from before leases).
ALTER TABLE agents ADD COLUMN hub_id TEXT;
ALTER TABLE agents ADD COLUMN lease_ms BIGINT;
