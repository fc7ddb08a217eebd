"""The transactional outbox: rows a back end writes in its own transactions, relayed to the bus."""
