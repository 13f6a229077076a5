-- The partitioned layout of README.md, for TestPartitionedTable.
CREATE TABLE llmproxy_requests (
    request_id        text NOT NULL,
    ts                timestamptz NOT NULL,
    key_id            text NOT NULL DEFAULT '',
    key_name          text NOT NULL DEFAULT '',
    user_id           text NOT NULL DEFAULT '',
    model             text NOT NULL DEFAULT '',
    endpoint          text NOT NULL DEFAULT '',
    status_code       int NOT NULL DEFAULT 0,
    is_stream         bool NOT NULL DEFAULT false,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    total_tokens      bigint NOT NULL DEFAULT 0,
    usage_source      text NOT NULL DEFAULT '',
    latency_ms        bigint NOT NULL DEFAULT 0,
    ttft_ms           bigint NOT NULL DEFAULT 0,
    backend_url       text NOT NULL DEFAULT '',
    client_ip         text NOT NULL DEFAULT '',
    error             text NOT NULL DEFAULT '',
    finish_reason     text NOT NULL DEFAULT '',
    tags              jsonb,
    request_body      jsonb,
    response          jsonb,
    event             jsonb NOT NULL,
    PRIMARY KEY (request_id, ts)
) PARTITION BY RANGE (ts);

-- A catch-all, so that an event for a day without a partition is never rejected.
CREATE TABLE llmproxy_requests_default PARTITION OF llmproxy_requests DEFAULT;

-- Today's partition; the test fills in the bounds.
CREATE TABLE llmproxy_requests_today PARTITION OF llmproxy_requests
    FOR VALUES FROM ('__FROM__') TO ('__TO__');
