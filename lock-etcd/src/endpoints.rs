//! Endpoint health: keeps a client's balanced channel on the members that
//! answer.
//!
//! etcd-client balances requests over every configured endpoint and leaves
//! failover to its user: a member that died stays in the balancer, and a
//! share of the requests (and of the keep-alive and watch streams) keeps
//! landing on it and failing, until it comes back. So after a transport
//! failure every endpoint is asked for its status, briefly; those that do
//! not answer (or answer without knowing a leader while another member
//! knows one) leave the balancer, and are asked again every second in the
//! background until they serve and are put back. The last endpoint that
//! answers is never removed, and when none answers nothing is: the trouble
//! is then not one member's.
//!
//! A request that failed at the transport is sent again at once, on the
//! remaining members, when removing a member changed the set: always if it
//! is idempotent (a read, a keep-alive, a watch), and a write only when no
//! connection could be made for it, which proves it never left the client.
//! A write whose outcome is unknown is never sent again here: its caller's
//! clean-up rules decide what happens to it.
//!
//! With a single endpoint there is nothing to choose from: everything here
//! is a no-op, and requests behave as they would without it.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, debug, info_span};

use crate::error;

/// How long a member may take to answer a probe made after a failure before
/// it leaves the balancer: ample for a member on a loaded machine, and short
/// enough that a request sent again still fits in its request timeout.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the members that left the balancer are asked again.
const REVIVE_EVERY: Duration = Duration::from_secs(1);

/// Whether a request may be sent again after a transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// A read, a keep-alive, the opening of a watch: sending it twice
    /// changes nothing.
    Idempotent,
    /// A write: sent again only when no connection could be made for it
    /// (it never left the client). A write that may have reached a member
    /// has an unknown outcome, which its caller's clean-up handles.
    IfNeverSent,
}

/// The endpoints of one client and which of them its balanced channel
/// uses. Clones share one state.
#[derive(Clone)]
pub(crate) struct EndpointHealth {
    /// `None` with a single endpoint: nothing to manage.
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for EndpointHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints = self.shared.as_ref().map(|shared| shared.endpoints.as_slice()).unwrap_or_default();
        f.debug_struct("EndpointHealth").field("managed", &endpoints).finish_non_exhaustive()
    }
}

struct Shared {
    /// The client whose balancer is managed.
    client: Client,
    /// The endpoints as configured.
    endpoints: Vec<String>,
    /// The same, as the balancer knows them (with a scheme).
    keys: Vec<String>,
    /// How to reach one member for a probe: the client's TLS, no
    /// credentials.
    probe: ConnectOptions,
    /// The limit of the probes made in the background, where there is no
    /// hurry: the client's connect timeout.
    revive_timeout: Duration,
    membership: Mutex<Membership>,
}

/// Which endpoints left the balancer, and when it last changed.
#[derive(Debug)]
struct Membership {
    removed: Vec<bool>,
    /// When the last check after a failure started.
    checked_at: Option<Instant>,
    /// When an endpoint was last removed.
    removed_at: Option<Instant>,
    /// Whether the background task that puts members back runs.
    reviving: bool,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    /// No answer within the limit.
    Dead,
    /// Answers, but knows no leader: cut off from the others, or in an
    /// election.
    Leaderless,
    /// Answers and knows a leader (or refused to say, as with
    /// authentication: it answers).
    Serving,
}

impl EndpointHealth {
    /// Manages the balancer of `client`, which connects to `endpoints`
    /// (as configured); `probe` reaches one member for a probe, and
    /// `revive_timeout` bounds the probes made in the background.
    pub(crate) fn new(
        client: &Client,
        endpoints: &[String],
        tls: bool,
        probe: ConnectOptions,
        revive_timeout: Duration,
    ) -> Self {
        if endpoints.len() < 2 {
            return Self { shared: None };
        }
        let membership =
            Membership { removed: vec![false; endpoints.len()], checked_at: None, removed_at: None, reviving: false };
        let shared = Shared {
            client: client.clone(),
            endpoints: endpoints.to_vec(),
            keys: endpoints.iter().map(|endpoint| balancer_key(endpoint, tls)).collect(),
            probe,
            revive_timeout: revive_timeout.max(PROBE_TIMEOUT),
            membership: Mutex::new(membership),
        };
        Self { shared: Some(Arc::new(shared)) }
    }

    /// A request sent (or a stream opened) at `since` failed at the
    /// transport: unless a check started since (and less than a probe's
    /// time before now, for a stream opened long ago), asks every member and
    /// takes those that do not answer out of the balancer. Returns whether
    /// an endpoint was removed at or after `since`, so that the request sent
    /// again (the stream opened again) may reach another member. Always
    /// `false` with a single endpoint.
    ///
    /// Cancel safe: the check runs in a task of its own, so a caller that
    /// gives up never leaves the balancer half-changed.
    pub(crate) async fn failed(&self, since: Instant) -> bool {
        let Some(shared) = &self.shared else { return false };
        let shared = Arc::clone(shared);
        let check = shared.check_after(since).instrument(info_span!("etcd_endpoints"));
        tokio::spawn(check).await.unwrap_or(false)
    }

    /// Like [`failed`](Self::failed), without waiting for the answer.
    pub(crate) fn failed_in_background(&self, since: Instant) {
        let Some(shared) = &self.shared else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(Arc::clone(shared).check_after(since).instrument(info_span!("etcd_endpoints")));
    }

    /// Sends the request `send` makes, within `limit` in all. When it fails
    /// at the transport and a member was removed meanwhile, it is sent again
    /// at once, as `replay` allows; otherwise the failure is returned as it
    /// came (after starting a check of the members, so that the requests
    /// after it avoid a dead one). With a single endpoint this is
    /// `timeout(limit, send())`.
    ///
    /// Cancel safe if `send`'s requests are.
    pub(crate) async fn send<T, F, Fut>(
        &self,
        limit: Duration,
        replay: Replay,
        mut send: F,
    ) -> Result<Result<T, etcd_client::Error>, Elapsed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let sending = async {
            loop {
                let sent = Instant::now();
                let outcome = send().await;
                let Err(failure) = &outcome else { return outcome };
                if !error::is_transport(failure) {
                    return outcome;
                }
                let again = match replay {
                    Replay::Idempotent => true,
                    Replay::IfNeverSent => error::never_sent(failure),
                };
                if !again {
                    self.failed_in_background(sent);
                    return outcome;
                }
                if !self.failed(sent).await {
                    return outcome;
                }
                debug!(%failure, "sending the request again on the remaining endpoints");
            }
        };
        let outcome = timeout(limit, sending).await;
        if outcome.is_err() {
            // Unanswered: a member that died (or hangs) may be why.
            self.failed_in_background(started);
        }
        outcome
    }
}

impl Shared {
    /// See [`EndpointHealth::failed`].
    async fn check_after(self: Arc<Self>, since: Instant) -> bool {
        let recent = Instant::now().checked_sub(PROBE_TIMEOUT).map_or(since, |recent| recent.max(since));
        let mut membership = self.membership.lock().await;
        if membership.checked_at.is_none_or(|at| at < recent) {
            membership.checked_at = Some(Instant::now());
            let healths = self.probe_all((0..self.endpoints.len()).collect(), PROBE_TIMEOUT).await;
            self.apply(&mut membership, &healths).await;
        }
        membership.removed_at.is_some_and(|at| at >= since)
    }

    /// Asks the members at `indexes` at once, each within `limit`.
    async fn probe_all(&self, indexes: Vec<usize>, limit: Duration) -> Vec<(usize, Health)> {
        let mut probes = JoinSet::new();
        for index in indexes {
            let (endpoint, options) = (self.endpoints[index].clone(), self.probe.clone());
            probes.spawn(async move { (index, probe(endpoint, options, limit).await) });
        }
        let mut healths = Vec::new();
        while let Some(probed) = probes.join_next().await {
            if let Ok(probed) = probed {
                healths.push(probed);
            }
        }
        healths
    }

    /// Keeps in the balancer the members that answered best (those that know
    /// a leader if any does, else those that answer at all), removes the
    /// others, and puts back the removed ones among the best. Nobody
    /// answering changes nothing.
    async fn apply(self: &Arc<Self>, membership: &mut Membership, healths: &[(usize, Health)]) {
        let best = healths.iter().map(|(_, health)| *health).max().unwrap_or(Health::Dead);
        if best == Health::Dead {
            debug!("no endpoint answers; keeping them all");
            return;
        }
        for &(index, health) in healths {
            let keep = health == best;
            if keep && membership.removed[index] {
                self.add(membership, index, "answers again").await;
            } else if !keep && !membership.removed[index] {
                match self.client.remove_endpoint(&self.keys[index]).await {
                    Ok(()) => {
                        membership.removed[index] = true;
                        membership.removed_at = Some(Instant::now());
                        debug!(endpoint = self.endpoints[index], ?health, "endpoint removed from the balancer");
                    }
                    Err(failure) => debug!(endpoint = self.endpoints[index], %failure, "cannot remove the endpoint"),
                }
            }
        }
        if membership.removed.contains(&true) && !membership.reviving {
            membership.reviving = true;
            let revive = revive(Arc::downgrade(self)).instrument(info_span!(parent: None, "etcd_endpoints"));
            tokio::spawn(revive);
        }
    }

    async fn add(&self, membership: &mut Membership, index: usize, why: &str) {
        match self.client.add_endpoint(&self.endpoints[index]).await {
            Ok(()) => {
                membership.removed[index] = false;
                debug!(endpoint = self.endpoints[index], why, "endpoint added back to the balancer");
            }
            Err(failure) => debug!(endpoint = self.endpoints[index], %failure, "cannot add the endpoint back"),
        }
    }
}

/// Asks the removed members every [`REVIVE_EVERY`] and puts back those that
/// serve; ends when none is left out, or when the client is gone.
async fn revive(shared: Weak<Shared>) {
    loop {
        sleep(REVIVE_EVERY).await;
        let Some(shared) = shared.upgrade() else { return };
        let removed: Vec<usize> = {
            let mut membership = shared.membership.lock().await;
            let removed: Vec<usize> = (0..membership.removed.len()).filter(|i| membership.removed[*i]).collect();
            if removed.is_empty() {
                membership.reviving = false;
                return;
            }
            removed
        };
        let healths = shared.probe_all(removed, shared.revive_timeout).await;
        let mut membership = shared.membership.lock().await;
        for (index, health) in healths {
            if health == Health::Serving && membership.removed[index] {
                shared.add(&mut membership, index, "serves again").await;
            }
        }
    }
}

/// Asks the member at `endpoint` for its status, on a connection of its own,
/// within `limit`.
async fn probe(endpoint: String, options: ConnectOptions, limit: Duration) -> Health {
    let options = options.with_connect_timeout(limit).with_timeout(limit);
    let asked = async {
        let mut client = Client::connect([endpoint.as_str()], Some(options)).await.ok()?;
        Some(client.status().await)
    };
    match timeout(limit, asked).await {
        Ok(Some(Ok(status))) if status.leader() != 0 => Health::Serving,
        Ok(Some(Ok(_))) => Health::Leaderless,
        // etcd answered, with a refusal.
        Ok(Some(Err(failure))) if !error::is_transport(&failure) => Health::Serving,
        _ => Health::Dead,
    }
}

/// `endpoint` as etcd-client's balancer knows it: a bare `host:port` gets
/// the scheme the client connects with.
fn balancer_key(endpoint: &str, tls: bool) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancer_keys_carry_the_scheme_the_client_adds() {
        assert_eq!(balancer_key("http://10.0.0.1:2379", true), "http://10.0.0.1:2379");
        assert_eq!(balancer_key("https://10.0.0.1:2379", false), "https://10.0.0.1:2379");
        assert_eq!(balancer_key("10.0.0.1:2379", false), "http://10.0.0.1:2379");
        assert_eq!(balancer_key("10.0.0.1:2379", true), "https://10.0.0.1:2379");
    }

    #[test]
    fn healths_order_from_dead_to_serving() {
        assert!(Health::Dead < Health::Leaderless && Health::Leaderless < Health::Serving);
    }
}
