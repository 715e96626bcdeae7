//! The redis-server settings a run's Redis needs to hold 10,000 worker processes: one policy,
//! rendered as command-line options for the managed Redis' Deployment and as redis.conf lines
//! for the local runner's server.
//!
//! # Clients and the file limit
//!
//! Every worker process holds [`WORKER_CONNECTIONS_PER_PROCESS`] connections (the
//! entrypoint's `CONNECTIONS_PER_PROCESS`) and every worker (a pod, or a process of the local
//! runner) one more for the supervisor that beats for its processes' ledgers
//! ([`WORKER_CONNECTIONS_PER_SUPERVISOR`]); with one process per worker, as by default, 10,000
//! of them need 30,000 clients, more than Redis' default `maxclients` of 10,000;
//! [`RESERVED_CLIENTS`] more are for the master, the operator and `kubectl abc`. Redis needs one file
//! descriptor per client plus 32 of its own, and at start raises its soft `RLIMIT_NOFILE` to
//! that by itself, which needs no privilege up to the hard limit the container runtime gives
//! (containerd and Docker give 524,288 or more). Where the hard limit is lower, Redis cannot
//! raise it: it logs "maxclients has been reduced to N to compensate for low ulimit" and
//! accepts N clients only; `INFO clients` then says `maxclients:N`, which
//! [`client_capacity_warning`] turns into a message naming the limit to raise.
//!
//! # The rest
//!
//! `tcp-backlog`: 10,000 workers reconnect at once after a Redis restart; Redis' default
//! backlog of 511 would make most of them wait for SYN retries (seconds each). The kernel caps
//! it at `net.core.somaxconn` (4096 by default since Linux 5.4; a namespaced sysctl, but not
//! one Kubernetes counts as safe, so the operator does not set it).
//! `timeout 0`: an idle worker waits between generations for minutes or hours on a
//! connection that sends nothing; Redis must never close it.

/// Redis connections one worker process holds: pyABC's pub/sub subscription and one for
/// commands, which the ledger shares (see the entrypoint's `Config.pool`).
pub const WORKER_CONNECTIONS_PER_PROCESS: u32 = 2;
/// Redis connections a worker's supervisor holds, whatever its number of processes: the
/// ledgers' heartbeat, which no model can starve there (the entrypoint's `supervise`).
pub const WORKER_CONNECTIONS_PER_SUPERVISOR: u32 = 1;
/// Connections per worker process where each worker has one process (the default): the
/// most a worker process can cost.
const CONNECTIONS_PER_SINGLE_PROCESS_WORKER: u32 =
    WORKER_CONNECTIONS_PER_PROCESS + WORKER_CONNECTIONS_PER_SUPERVISOR;
/// Worker processes one run's Redis is configured for.
pub const MAX_WORKER_PROCESSES: u32 = 10_000;
/// Clients beyond the workers': the master (pyABC's sampler holds a few), the operator and
/// `kubectl abc`.
pub const RESERVED_CLIENTS: u32 = 1_000;
/// Backlog of connections waiting to be accepted (capped by the kernel's somaxconn).
pub const TCP_BACKLOG: u32 = 4096;
/// File descriptors Redis keeps for itself beyond one per client (`CONFIG_MIN_RESERVED_FDS`).
const REDIS_RESERVED_FDS: u32 = 32;

/// `maxclients`: every worker process' connections with a supervisor each, and the reserve.
pub const fn max_clients() -> u32 {
    MAX_WORKER_PROCESSES * CONNECTIONS_PER_SINGLE_PROCESS_WORKER + RESERVED_CLIENTS
}

/// The open-files limit redis-server needs for [`max_clients`] (it raises its own soft limit
/// to this if the hard limit allows).
pub const fn file_limit() -> u32 {
    max_clients() + REDIS_RESERVED_FDS
}

/// The settings as `(directive, value)`, in redis.conf's names.
pub fn directives() -> [(&'static str, String); 3] {
    [
        ("maxclients", max_clients().to_string()),
        ("tcp-backlog", TCP_BACKLOG.to_string()),
        ("timeout", "0".to_string()),
    ]
}

/// As redis-server command-line options (`--maxclients 31000 ...`).
pub fn command_line_options() -> Vec<String> {
    directives()
        .into_iter()
        .flat_map(|(name, value)| [format!("--{name}"), value])
        .collect()
}

/// As redis.conf lines.
pub fn config_lines() -> String {
    directives()
        .into_iter()
        .map(|(name, value)| format!("{name} {value}\n"))
        .collect()
}

/// `maxclients` from the text of `INFO clients` (Redis 7 and later), if it is there.
pub fn max_clients_from_info(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("maxclients:"))
        .and_then(|value| value.parse().ok())
}

/// A message for the user when the server accepts fewer clients than configured: Redis
/// lowered `maxclients` because its file limit was too low.
pub fn client_capacity_warning(effective_max_clients: u32) -> Option<String> {
    (effective_max_clients < max_clients()).then(|| {
        format!(
            "Redis accepts at most {effective_max_clients} clients, not {}: its open-files limit \
             is too low, so it lowered maxclients; that holds about {} worker processes \
             ({CONNECTIONS_PER_SINGLE_PROCESS_WORKER} connections each with its supervisor, \
             {RESERVED_CLIENTS} kept for the master and the operator); raise the hard \
             RLIMIT_NOFILE of the container runtime (or `ulimit -Hn` locally) to at least {}",
            max_clients(),
            effective_max_clients.saturating_sub(RESERVED_CLIENTS)
                / CONNECTIONS_PER_SINGLE_PROCESS_WORKER,
            file_limit(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_worker_processes_fit_with_room_for_master_and_operator() {
        assert_eq!(max_clients(), 31_000);
        assert_eq!(file_limit(), 31_032);
        assert!(
            max_clients() > 10_000,
            "more than Redis' default maxclients"
        );
    }

    #[test]
    fn entrypoint_states_the_same_connections_per_process() {
        for line in [
            format!("CONNECTIONS_PER_PROCESS = {WORKER_CONNECTIONS_PER_PROCESS}\n"),
            format!("CONNECTIONS_PER_SUPERVISOR = {WORKER_CONNECTIONS_PER_SUPERVISOR}\n"),
        ] {
            assert!(super::super::WORKER_ENTRYPOINT.contains(&line), "{line}");
        }
    }

    #[test]
    fn renders_as_options_and_as_config_lines() {
        assert_eq!(
            command_line_options(),
            [
                "--maxclients",
                "31000",
                "--tcp-backlog",
                "4096",
                "--timeout",
                "0"
            ]
        );
        assert_eq!(
            config_lines(),
            "maxclients 31000\ntcp-backlog 4096\ntimeout 0\n"
        );
    }

    #[test]
    fn a_lowered_maxclients_is_reported_with_the_limit_to_raise() {
        let info = "# Clients\r\nconnected_clients:1\r\nmaxclients:19968\r\nblocked_clients:0\r\n";
        let effective = max_clients_from_info(info).unwrap();
        assert_eq!(effective, 19_968);
        let warning = client_capacity_warning(effective).unwrap();
        assert!(warning.contains("about 6322 worker processes"), "{warning}");
        assert!(warning.contains("at least 31032"), "{warning}");
        assert_eq!(client_capacity_warning(max_clients()), None);
        assert_eq!(max_clients_from_info("# Clients\r\n"), None);
    }
}
