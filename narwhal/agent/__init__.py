"""The agent: forge webhooks in, commit events out to RabbitMQ (see the agent issue)."""
