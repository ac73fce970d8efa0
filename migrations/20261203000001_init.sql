-- Runs, their metric points and checkpoints. Statuses mirror `store::RunStatus`.
create table run (
    id            integer primary key autoincrement,
    name          text    not null,
    method        text    not null,
    config        text    not null,            -- the validated RunConfig as JSON
    status        text    not null default 'queued'
                  check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    device        text,                        -- e.g. 'cpu' or 'cuda:0', set when it starts
    error         text,
    step          integer not null default 0,  -- optimiser steps done
    total_steps   integer not null default 0,
    epoch         integer not null default 0,
    epochs        integer not null default 0,
    created_at    text    not null,            -- RFC 3339, UTC
    started_at    text,
    finished_at   text
);
create index run_status on run (status, id);

-- One scalar observation; (run, key, step) is unique so a replayed batch is idempotent.
create table scalar (
    run_id     integer not null references run (id) on delete cascade,
    key        text    not null,
    step       integer not null,
    epoch      integer not null,
    value      real    not null,
    wall_time  real    not null,               -- seconds since the Unix epoch
    primary key (run_id, key, step)
) without rowid;

create table checkpoint (
    run_id     integer not null references run (id) on delete cascade,
    name       text    not null,
    path       text    not null,               -- relative to the data dir
    bytes      integer not null,
    sha256     text    not null,
    created_at text    not null,
    primary key (run_id, name)
);
