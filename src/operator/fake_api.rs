//! An in-memory stand-in for the Kubernetes API, so reconcile tests need no
//! cluster and run in milliseconds (kube-rs' controller-rs pattern: a tower
//! service behind `kube::Client::new`). It keeps just enough of the apiserver's
//! REST semantics for `reconcile` to run unchanged against it: GET, create-once
//! (409 when the name is taken), server-side apply, merge patch and the status
//! subresource, with errors as real `metav1.Status` bodies (so `get_opt` sees a
//! 404 as "absent" and `ensure_ca` a 409 as "lost the race").
//!
//! It records every request, because the properties worth testing are mostly
//! about what the operator must *not* write, and it can act before a chosen
//! request (store a racing writer's object, or fail), to reach the paths a
//! cluster only shows under contention.
//!
//! Namespaced objects only, stored as JSON by path
//! (`/api/v1/namespaces/ns/secrets/name`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::runtime::events::{Recorder, Reporter};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::policy::Policy;
use super::{Context, OperatorMetrics};

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The object the request addresses, with its subresource if any (for a
    /// create: the collection plus the name in the body), without the query.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Recorded {
    /// Whether the request could change an object. Events are left out: they
    /// record what happened and change nothing that runs.
    pub fn is_write(&self) -> bool {
        self.method != Method::GET && !self.path.contains("/events/")
    }
}

/// What to do before the next request of a method on an object.
enum Fault {
    /// Store this object first: another writer won a race.
    Insert(Value),
    /// Answer with this HTTP status instead.
    Fail(u16),
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    faults: Vec<(Method, String, Fault)>,
    /// The last resourceVersion handed out (one counter for every object, as etcd's).
    version: u64,
}

/// The fake apiserver; clones share one store.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

impl FakeApi {
    /// The path under which an object of type `K` is stored and addressed.
    pub fn path<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
        format!("{}/{name}", K::url_path(&(), Some(namespace)))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the others' results.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `object` as it is (status included), as if it existed before the test.
    pub fn insert<K: Resource<DynamicType = ()> + Serialize>(&self, object: &K) {
        let (path, value) = typed(object);
        self.state().create(path, value);
    }

    /// The object as the fake now holds it.
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let value = self.objects().remove(&Self::path::<K>(namespace, name))?;
        Some(serde_json::from_value(value).expect("a stored object deserializes"))
    }

    /// Every stored object by path, to compare before and after.
    pub fn objects(&self) -> BTreeMap<String, Value> {
        self.state().objects.clone()
    }

    /// Before the next `method` on `winner`'s path, stores `winner`: a racing
    /// reconcile (or a person) got there first, so a create answers 409.
    pub fn race<K: Resource<DynamicType = ()> + Serialize>(&self, method: Method, winner: &K) {
        let (path, value) = typed(winner);
        self.state()
            .faults
            .push((method, path, Fault::Insert(value)));
    }

    /// The next `method` on the object at `path` fails with HTTP `code`.
    pub fn fail(&self, method: Method, path: String, code: u16) {
        self.state().faults.push((method, path, Fault::Fail(code)));
    }

    /// The requests so far, which are then forgotten (to look at one reconcile only).
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state().requests)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// The requests that could change an object (see [`Recorded::is_write`]).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    /// The reasons of the Events recorded, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.path.contains("/events/"))
            .filter_map(|r| r.body.as_ref()?["reason"].as_str().map(str::to_owned))
            .collect()
    }

    /// A client whose every request this fake answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                let (code, json) =
                    api.state()
                        .handle(&parts.method, parts.uri.path(), content_type, &body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json.to_string())))
                    .expect("a response");
                Ok::<_, Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }

    /// A reconcile context talking to this fake, with the operator's default
    /// policy for the image `privreg:test`.
    pub fn context(&self) -> Arc<Context> {
        let client = self.client();
        Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: crate::FIELD_MANAGER.to_owned(),
                    instance: Some("test".to_owned()),
                },
            ),
            client,
            policy: Policy::new("privreg:test", &[]).expect("a valid policy"),
            metrics: OperatorMetrics::new(),
            bundle_nudge: Arc::new(tokio::sync::Notify::new()),
            stop: tokio_util::sync::CancellationToken::new(),
            failures: Default::default(),
            registries: Default::default(),
            trust_daemonset: super::daemonset::TrustDaemonSetConfig::new(
                "privreg-system",
                "privreg:test",
                Default::default(),
                &[],
                "[]",
            )
            .expect("a valid DaemonSet config"),
            published: Default::default(),
            trust_stores: Default::default(),
            trust_ready: Default::default(),
            ca_overlap: std::time::Duration::from_secs(300),
            owner_deployment: None,
            // Nothing serves the fake's ClusterIPs; serving.rs and the
            // real-node test cover the check.
            check_serving: false,
        })
    }
}

/// An object's path and JSON, which names its type as the apiserver stores it.
fn typed<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> (String, Value) {
    let meta = object.meta();
    let path = FakeApi::path::<K>(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().expect("a named object"),
    );
    let mut value = serde_json::to_value(object).expect("serializable");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    (path, value)
}

/// A request's object path (`.../namespaces/<ns>/<resource>/<name>`) and
/// subresource, or `None` for what the fake does not serve (lists,
/// cluster-scoped paths).
fn target(path: &str, body: Option<&Value>) -> Option<(String, Option<String>)> {
    let segments: Vec<&str> = path.split('/').collect();
    let collection_end = segments.iter().position(|s| *s == "namespaces")? + 3;
    let collection = segments.get(..collection_end)?.join("/");
    let name = match segments.get(collection_end) {
        Some(name) => (*name).to_owned(),
        None => body?["metadata"]["name"].as_str()?.to_owned(),
    };
    let subresource = segments.get(collection_end + 1).map(|s| (*s).to_owned());
    Some((format!("{collection}/{name}"), subresource))
}

/// A `metav1.Status` failure, as the apiserver answers.
fn failure(code: u16, path: &str) -> (u16, Value) {
    let reason = match code {
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "AlreadyExists",
        415 => "UnsupportedMediaType",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason}: {path}"), "reason": reason, "code": code,
    });
    (code, body)
}

/// Merges `patch` into `target` down to `depth` levels of objects, below which
/// a value replaces what was there; a null removes the key. Unbounded, this is
/// a JSON merge patch (RFC 7386). At depth 2 it stands in for server-side
/// apply: each section's (`metadata`, `spec`, `data`, ...) applied fields
/// replace the stored ones, and fields the applier does not send (a Service's
/// assigned clusterIP, the uid) stay.
fn merge(target: &mut Value, patch: &Value, depth: usize) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) if depth > 0 => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(
                        target.entry(key.clone()).or_insert(Value::Null),
                        value,
                        depth - 1,
                    );
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

impl State {
    /// Stores `object` at `path` under a new resourceVersion.
    fn store(&mut self, path: String, mut object: Value) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        self.objects.insert(path, object.clone());
        object
    }

    /// Stores a new object with what the apiserver assigns on creation.
    fn create(&mut self, path: String, mut object: Value) -> Value {
        let meta = &mut object["metadata"];
        if meta["uid"].is_null() {
            meta["uid"] = uuid::Uuid::new_v4().to_string().into();
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] =
                serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).expect("a time");
        }
        // The one default `reconcile` reads back: a Service's ClusterIP, which
        // goes into the server certificate.
        if path.contains("/services/") && object["spec"]["clusterIP"].is_null() {
            object["spec"]["clusterIP"] = format!("10.96.0.{}", self.version % 250 + 1).into();
        }
        self.store(path, object)
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, Value) {
        let body: Option<Value> = serde_json::from_slice(body).ok();
        let Some((object, subresource)) = target(path, body.as_ref()) else {
            return failure(405, path);
        };
        self.requests.push(Recorded {
            method: method.clone(),
            path: subresource
                .as_ref()
                .map_or_else(|| object.clone(), |s| format!("{object}/{s}")),
            content_type: content_type.map(str::to_owned),
            body: body.clone(),
        });
        if let Some(i) = self
            .faults
            .iter()
            .position(|(m, p, _)| m == method && *p == object)
        {
            match self.faults.remove(i).2 {
                Fault::Insert(winner) => {
                    self.create(object.clone(), winner);
                }
                Fault::Fail(code) => return failure(code, &object),
            }
        }
        let exists = self.objects.contains_key(&object);
        match (method.as_str(), subresource.as_deref(), exists) {
            ("GET", None, true) => (200, self.objects[&object].clone()),
            ("POST", None, true) => failure(409, &object),
            ("POST", None, false) => (201, self.create(object, body.unwrap_or_default())),
            ("PATCH", None | Some("status"), _) => {
                self.patch(object, subresource.is_some(), content_type, body)
            }
            ("GET", None, false) => failure(404, &object),
            _ => failure(405, &object),
        }
    }

    /// Server-side apply (creates a missing object) or merge patch. A write to
    /// the status subresource changes only `.status`, a write to the object
    /// never does, as for any type with a status subresource. An unchanged
    /// object keeps its resourceVersion: the apiserver does not persist no-ops.
    fn patch(
        &mut self,
        object: String,
        status: bool,
        content_type: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (apply, depth) = match content_type {
            Some(APPLY) => (true, 2),
            Some(MERGE) => (false, usize::MAX),
            _ => return failure(415, &object),
        };
        let mut patch = body.unwrap_or_default();
        if status {
            patch = json!({ "status": patch["status"].take() });
        } else if let Some(fields) = patch.as_object_mut() {
            fields.remove("status");
        }
        match self.objects.get(&object) {
            Some(stored) => {
                let mut merged = stored.clone();
                merge(&mut merged, &patch, depth);
                if merged == *stored {
                    (200, merged)
                } else {
                    (200, self.store(object, merged))
                }
            }
            None if apply && !status => (201, self.create(object, patch)),
            None => failure(404, &object),
        }
    }
}
