//! What the DNS server counts, and its Prometheus text.
//!
//! Every message received bumps `queries`; then exactly one of the outcome counters
//! (`answered`, `nodata`, `nxdomain`, `refused`, `not_implemented`, `servfail`, `malformed`,
//! `rate_limited`) tells what became of it, so they add up to `queries`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::answer::Outcome;

/// Counters bumped by the server's tasks; the agent renders them on `/metrics`.
#[derive(Debug, Default)]
pub struct DnsCounters {
    /// Messages received, over UDP and TCP, before rate limiting.
    pub queries: AtomicU64,
    /// Answered NOERROR with at least one record.
    pub answered: AtomicU64,
    /// Answered NOERROR with no record: the name exists, the type does not (NODATA).
    pub nodata: AtomicU64,
    /// Answered NXDOMAIN: a name in the zone that names nothing.
    pub nxdomain: AtomicU64,
    /// Answered REFUSED: a name outside the zone (this server does not forward) or a class
    /// other than IN.
    pub refused: AtomicU64,
    /// Answered NOTIMP (an opcode other than QUERY) or BADVERS (an EDNS version above 0).
    pub not_implemented: AtomicU64,
    /// Answered SERVFAIL: the answer could not be encoded (never seen; counted to show it).
    pub servfail: AtomicU64,
    /// Messages that did not decode: answered FORMERR when the header was readable, dropped
    /// otherwise; responses sent to us are dropped and counted here too.
    pub malformed: AtomicU64,
    /// Messages dropped unread because their client was over its rate.
    pub rate_limited: AtomicU64,
    /// UDP answers cut to their question with TC set (the client retries over TCP). Not an
    /// outcome of its own: such an answer is also counted by its result.
    pub truncated: AtomicU64,
    /// TCP connections closed at once because all slots were taken.
    pub tcp_refused: AtomicU64,
    /// Failed socket operations (receive, send, accept); each is logged at debug level.
    pub io_errors: AtomicU64,
}

impl DnsCounters {
    /// Appends the counters in the Prometheus text format, names starting `starling_dns_`.
    pub fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, series: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        counter(
            "starling_dns_queries_total",
            "DNS messages received over UDP and TCP, before rate limiting.",
            &[("", load(&self.queries))],
        );
        counter(
            "starling_dns_answers_total",
            "DNS queries answered, by result: answered (records), nodata (the name exists, not the type), nxdomain, refused (outside svc.starling: not forwarded), not_implemented, servfail.",
            &[
                ("{result=\"answered\"}", load(&self.answered)),
                ("{result=\"nodata\"}", load(&self.nodata)),
                ("{result=\"nxdomain\"}", load(&self.nxdomain)),
                ("{result=\"refused\"}", load(&self.refused)),
                ("{result=\"not_implemented\"}", load(&self.not_implemented)),
                ("{result=\"servfail\"}", load(&self.servfail)),
            ],
        );
        counter(
            "starling_dns_dropped_total",
            "DNS messages not answered normally: malformed (answered FORMERR when the header was readable, dropped otherwise) and rate_limited (the client was over its rate; dropped unread).",
            &[
                ("{reason=\"malformed\"}", load(&self.malformed)),
                ("{reason=\"rate_limited\"}", load(&self.rate_limited)),
            ],
        );
        counter(
            "starling_dns_truncated_total",
            "UDP answers too large for the client, sent as the question alone with TC set so it retries over TCP.",
            &[("", load(&self.truncated))],
        );
        counter(
            "starling_dns_tcp_refused_total",
            "DNS TCP connections closed at once because all connection slots were taken.",
            &[("", load(&self.tcp_refused))],
        );
        counter(
            "starling_dns_io_errors_total",
            "Failed DNS socket receives, sends and accepts.",
            &[("", load(&self.io_errors))],
        );
    }

    /// Counts what became of one message that passed the rate limit.
    pub(crate) fn count(&self, outcome: Outcome, truncated: bool) {
        let counter = match outcome {
            Outcome::Answered => &self.answered,
            Outcome::NoData => &self.nodata,
            Outcome::NxDomain => &self.nxdomain,
            Outcome::Refused => &self.refused,
            Outcome::NotImplemented => &self.not_implemented,
            Outcome::ServFail => &self.servfail,
            Outcome::Malformed => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }
}
