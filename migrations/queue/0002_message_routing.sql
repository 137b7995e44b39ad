-- AMQP-style routing properties for messages that are not carts: the fulfilment relay's
-- new-order messages carry a correlation id and the address partners reply to.
ALTER TABLE messages ADD COLUMN correlation_id TEXT;
ALTER TABLE messages ADD COLUMN reply_to TEXT;
ALTER TABLE messages ADD COLUMN subject TEXT;
