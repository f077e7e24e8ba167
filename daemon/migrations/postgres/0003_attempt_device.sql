-- Where each attempt ran on its agent, as the agent reports it: `cuda:N` (a GPU) or `cpu`.
-- NULL: not reported (agents from before protocol version 3, or no progress yet).
ALTER TABLE attempts ADD COLUMN device TEXT;
