//! Where the CLI reads and writes desired state: Redis directly, or a running `serve` over
//! HTTP (`--server`/`ORCHESTRATOR_URL`). Every verb goes through [`Backend`], so both modes
//! behave the same; writes in Redis mode go through [`crate::ops`] exactly like the API's.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::OnceCell;

use crate::client::{ApiClient, ClientError, HttpWatch};
use crate::domain::admission::Admit;
use crate::domain::contract::{Policy, PublishedPolicy};
use crate::domain::resource::Session;
use crate::domain::selector::Selector;
use crate::ops::{self, Applied, OpsError, PatchRequest};
use crate::runtime::{LogQuery, Runtime};
use crate::store::{SessionEvent, Store, StoreError, Unreadable, Watch, WatchEvent};

/// The writer name of the CLI in `source` annotations and events.
pub const WRITER: &str = "cli";

/// The policy the CLI admits with, and where it came from.
#[derive(Debug, Clone)]
pub struct PolicyInUse {
    /// The policy.
    pub policy: Policy,
    /// Where it came from, for messages: the publishing server, or the built-in default.
    pub source: String,
    /// True when no server published one and the built-in default is used.
    pub fallback: bool,
    /// The publisher's instance (empty when unknown).
    pub instance: String,
}

impl PolicyInUse {
    fn from_published(p: PublishedPolicy) -> PolicyInUse {
        PolicyInUse {
            source: format!(
                "the policy of {} (published {})",
                p.publisher,
                p.published_at.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            policy: p.policy,
            fallback: false,
            instance: p.instance,
        }
    }
}

/// Where the CLI reads and writes desired state.
pub struct Backend {
    kind: Kind,
    policy: OnceCell<PolicyInUse>,
}

// One value per CLI invocation: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// Redis directly (and the Docker engine, for `logs`), as instance `instance`.
    Store { store: Store, instance: String },
    /// A remote `serve`.
    Http(ApiClient),
}

/// A watch on either backend, of one kind (sessions by default).
pub enum AnyWatch<T = Session> {
    /// The Redis stream.
    Store(Watch<T>),
    /// The API's SSE.
    Http(HttpWatch<T>),
}

impl<T: Admit> AnyWatch<T> {
    /// Wait up to `block` for events.
    pub async fn next_batch(&mut self, block: Duration) -> Result<Vec<WatchEvent<T>>, ClientError> {
        match self {
            AnyWatch::Store(w) => Ok(w.next_batch(block).await?),
            AnyWatch::Http(w) => w.next_batch(block).await,
        }
    }
}

impl ops::Changes for AnyWatch<Session> {
    type Error = ClientError;
    async fn next_batch(&mut self, block: Duration) -> Result<Vec<WatchEvent>, ClientError> {
        AnyWatch::next_batch(self, block).await
    }
}

impl Backend {
    /// Redis directly.
    pub fn store(store: Store, instance: &str) -> Backend {
        Backend {
            kind: Kind::Store {
                store,
                instance: instance.to_string(),
            },
            policy: OnceCell::new(),
        }
    }

    /// A remote `serve`.
    pub fn http(client: ApiClient) -> Backend {
        Backend {
            kind: Kind::Http(client),
            policy: OnceCell::new(),
        }
    }

    /// True for a remote backend.
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Http(_))
    }

    /// The policy to admit with: the one the server published (in the store, or at
    /// `GET /api/v1/policy`), else the built-in default (said in `source`). Read once.
    pub async fn policy(&self) -> Result<&PolicyInUse, ClientError> {
        self.policy
            .get_or_try_init(|| async {
                Ok(match &self.kind {
                    Kind::Store { store, .. } => match store.published_policy().await? {
                        Some(p) => PolicyInUse::from_published(p),
                        None => PolicyInUse {
                            policy: Policy::default(),
                            source: "the built-in default policy (no `serve` has published \
                                     one to this store yet)"
                                .into(),
                            fallback: true,
                            instance: String::new(),
                        },
                    },
                    Kind::Http(c) => match c.policy().await {
                        Ok(p) => PolicyInUse::from_published(p),
                        // A server from before policy publication: it still admits every
                        // write itself.
                        Err(ClientError::Api { code: 404, .. }) => PolicyInUse {
                            policy: Policy::default(),
                            source: "the built-in default policy (the server does not \
                                     publish its own; it checks every write itself)"
                                .into(),
                            fallback: true,
                            instance: String::new(),
                        },
                        Err(e) => return Err(e),
                    },
                })
            })
            .await
    }

    /// One session, or `None`.
    pub async fn get(&self, name: &str) -> Result<Option<Session>, ClientError> {
        self.get_as(name).await
    }

    /// One object of kind `T`, or `None`.
    pub async fn get_as<T: Admit>(&self, name: &str) -> Result<Option<T>, ClientError> {
        match &self.kind {
            Kind::Store { store, .. } => Ok(store.of::<T>().get(name).await?),
            Kind::Http(c) => c.get_as(name).await,
        }
    }

    /// Every session matching the label `selector` (all when empty), the list's revision,
    /// and the stored objects that could not be decoded (set aside, see [`Unreadable`]).
    /// The API evaluates the selector itself in `--server` mode.
    pub async fn list(
        &self,
        selector: &str,
    ) -> Result<(Vec<Session>, u64, Vec<Unreadable>), ClientError> {
        self.list_as(selector).await
    }

    /// [`Backend::list`] for objects of kind `T`.
    pub async fn list_as<T: Admit>(
        &self,
        selector: &str,
    ) -> Result<(Vec<T>, u64, Vec<Unreadable>), ClientError> {
        let parsed = Selector::parse(selector)?;
        match &self.kind {
            Kind::Store { store, .. } => {
                let snap = store.of::<T>().list().await?;
                let items = snap
                    .items
                    .into_iter()
                    .filter(|s| parsed.matches(&s.meta().labels))
                    .collect();
                Ok((items, snap.revision, snap.unreadable))
            }
            Kind::Http(c) => c.list_as(Some(selector)).await,
        }
    }

    /// Create or update, as the CLI.
    pub async fn apply(
        &self,
        s: &Session,
        dry_run: bool,
    ) -> Result<(Applied, Session), ClientError> {
        self.apply_as(s, dry_run).await
    }

    /// Create or update an object of kind `T`, as the CLI.
    pub async fn apply_as<T: Admit>(
        &self,
        obj: &T,
        dry_run: bool,
    ) -> Result<(Applied, T), ClientError> {
        match &self.kind {
            Kind::Store { store, .. } => {
                let policy = &self.policy().await?.policy;
                Ok(ops::apply(&store.of::<T>(), policy, obj, WRITER, dry_run).await?)
            }
            Kind::Http(c) => c.apply_as(obj, dry_run).await,
        }
    }

    /// Patch an object of kind `T`, as the CLI.
    pub async fn patch_as<T: Admit>(
        &self,
        req: &PatchRequest<'_>,
    ) -> Result<(Applied, T), ClientError> {
        match &self.kind {
            Kind::Store { store, .. } => {
                let policy = &self.policy().await?.policy;
                Ok(ops::patch(&store.of::<T>(), policy, WRITER, req).await?)
            }
            Kind::Http(c) => {
                let before = c.get_as::<T>(req.name).await?;
                let after = c.patch_as::<T>(req).await?;
                let same = before
                    .is_some_and(|b| b.meta().resource_version == after.meta().resource_version);
                let what = if same {
                    Applied::Unchanged
                } else {
                    Applied::Configured
                };
                Ok((what, after))
            }
        }
    }

    /// Ask for a rollout restart of the session's sandbox ([`ops::restart`]).
    pub async fn restart(&self, name: &str) -> Result<Option<Session>, ClientError> {
        match &self.kind {
            Kind::Store { store, .. } => match ops::restart(store, name, WRITER).await {
                Ok(s) => Ok(Some(s)),
                Err(OpsError::Store(StoreError::NotFound(_))) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Kind::Http(c) => c.restart(name).await,
        }
    }

    /// Delete a session, as the CLI; `None` when it did not exist. With `dry_run`, nothing
    /// is deleted and the current object is returned.
    pub async fn delete(&self, name: &str, dry_run: bool) -> Result<Option<Session>, ClientError> {
        self.delete_as(name, dry_run).await
    }

    /// [`Backend::delete`] for an object of kind `T`.
    pub async fn delete_as<T: Admit>(
        &self,
        name: &str,
        dry_run: bool,
    ) -> Result<Option<T>, ClientError> {
        if dry_run {
            // Say what a real delete would say, the owner check included.
            let current = self.get_as::<T>(name).await?;
            if let Some(s) = &current {
                ops::check_owner(s, WRITER)?;
            }
            return Ok(current);
        }
        match &self.kind {
            Kind::Store { store, .. } => {
                match ops::delete(&store.of::<T>(), name, None, WRITER).await {
                    Ok(s) => Ok(Some(s)),
                    Err(OpsError::Store(StoreError::NotFound(_))) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Kind::Http(c) => c.delete_as(name).await,
        }
    }

    /// The session's recent events.
    pub async fn events(&self, name: &str) -> Result<Vec<SessionEvent>, ClientError> {
        self.events_as::<Session>(name).await
    }

    /// The recent events of an object of kind `T`.
    pub async fn events_as<T: Admit>(&self, name: &str) -> Result<Vec<SessionEvent>, ClientError> {
        match &self.kind {
            Kind::Store { store, .. } => Ok(store.of::<T>().events(name).await?),
            Kind::Http(c) => c.events_as::<T>(name).await,
        }
    }

    /// The summary of the session's container (`None`: none), or why it is unavailable.
    pub async fn container(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Option<serde_json::Value>, String> {
        match &self.kind {
            Kind::Http(c) => c.container(name).await.map_err(|e| e.to_string()),
            Kind::Store { instance, .. } => {
                let rt = Runtime::connect(instance)
                    .await
                    .map_err(|e| e.to_string())?;
                rt.inspect(id)
                    .await
                    .map(|info| Some(crate::runtime::summary(&info)))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The stderr of the session's sandbox as it arrives (`None`: the session has no
    /// container). In Redis mode this reads the Docker engine directly.
    pub async fn logs(
        &self,
        session: &Session,
        q: &LogQuery,
    ) -> Result<Option<BoxStream<'static, Result<bytes::Bytes, ClientError>>>, ClientError> {
        match &self.kind {
            Kind::Http(c) => c.logs(session.name(), q).await,
            Kind::Store { store, instance } => {
                let rt = Runtime::connect(instance).await?;
                let identity = store.identity().await?;
                let claimed = store.claimed_by(session).await?;
                let stream = rt.session_stderr(session, &identity, &claimed, q).await?;
                Ok(stream.map(|s| s.map(|r| r.map_err(ClientError::from)).boxed()))
            }
        }
    }

    /// Watch every session after `revision`.
    pub async fn watch(&self, revision: u64) -> Result<AnyWatch, ClientError> {
        self.watch_as(revision).await
    }

    /// Watch every object of kind `T` after `revision` (of that kind's change stream).
    pub async fn watch_as<T: Admit>(&self, revision: u64) -> Result<AnyWatch<T>, ClientError> {
        match &self.kind {
            Kind::Store { store, .. } => {
                Ok(AnyWatch::Store(store.of::<T>().watch(revision).await?))
            }
            Kind::Http(c) => Ok(AnyWatch::Http(c.watch_as(revision).await?)),
        }
    }
}
