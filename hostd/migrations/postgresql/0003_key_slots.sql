-- Each usable key holds a numbered slot, unique per account (see ../0003_key_slots.sql).
ALTER TABLE api_keys ADD COLUMN slot BIGINT;

UPDATE api_keys SET slot = (
    SELECT count(*) FROM api_keys AS earlier
    WHERE earlier.user_id = api_keys.user_id
      AND earlier.invalidated_at IS NULL
      AND earlier.id <= api_keys.id
)
WHERE invalidated_at IS NULL;

CREATE UNIQUE INDEX api_keys_by_slot ON api_keys (user_id, slot) WHERE slot IS NOT NULL;
