//! The plain manifests (deploy/*.yaml) and the Helm chart (charts/privreg) are
//! accepted by a real kube-apiserver: every object is server-side applied with
//! `dryRun=All` and `fieldValidation=Strict` (as `kubectl apply --server-side
//! --dry-run=server` does), so it is checked against the real OpenAPI schemas,
//! the CRD's structural schema, RBAC's own validation and every admission
//! plugin, without being stored. The CRDs are applied for real first (and must
//! become Established) and the namespaces created, so dependent objects have
//! something to be validated against. Negative controls prove the dry run
//! really validates. The chart is rendered twice: cluster-wide (the default)
//! and namespaced (`watchNamespaces={team-a}`, in its own release namespace).
//! Finally the RBAC of deploy/02-rbac.yaml and of both chart renders is
//! applied for real, and SubjectAccessReviews check what each operator
//! ServiceAccount may and may not do: everywhere in cluster-wide mode; in
//! namespaced mode only in team-a (not team-b, not all namespaces at once),
//! plus the Lease and the trust bundle ConfigMap in its own namespace, and
//! nothing cluster-scoped. One control plane for the whole file (starting one
//! costs ~10 s).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::discovery::{self, ApiCapabilities, Scope};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};

use common::cluster::ControlPlane;
use common::{run, tool};

const MANAGER: &str = "privreg-test";
const OPERATOR_NAMESPACE: &str = "privreg-system";
/// The chart's release name in every render (its objects are `t-operator...`).
const CHART_RELEASE: &str = "t";
/// The release namespace of the chart rendered in namespaced mode.
const SCOPED_NAMESPACE: &str = "privreg-scoped";
/// The namespace that mode watches, and one it does not.
const WATCHED: &str = "team-a";
const UNWATCHED: &str = "team-b";
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
const RBAC_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One object from a manifest, with where it came from (for messages).
struct Doc {
    source: String,
    obj: DynamicObject,
}

impl Doc {
    fn kind(&self) -> &str {
        self.obj.types.as_ref().map_or("", |t| t.kind.as_str())
    }

    fn label(&self) -> String {
        match &self.obj.metadata.namespace {
            Some(ns) => format!(
                "{} {ns}/{} ({})",
                self.kind(),
                self.obj.name_any(),
                self.source
            ),
            None => format!("{} {} ({})", self.kind(), self.obj.name_any(), self.source),
        }
    }
}

/// Every non-empty YAML document of `text`, as objects with apiVersion and kind.
fn parse_docs(source: &str, text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{source}: YAML document {i} does not parse: {e}"));
        if value.is_null() {
            continue; // a comment-only document
        }
        let obj: DynamicObject = serde_json::from_value(value)
            .unwrap_or_else(|e| panic!("{source}: document {i} is not an object: {e}"));
        let types = obj
            .types
            .as_ref()
            .unwrap_or_else(|| panic!("{source}: document {i} has no apiVersion/kind"));
        assert!(
            !types.api_version.is_empty() && !types.kind.is_empty(),
            "{source}: document {i} has an empty apiVersion or kind"
        );
        assert!(
            obj.metadata.name.is_some(),
            "{source}: document {i} ({}) has no metadata.name",
            types.kind
        );
        docs.push(Doc {
            source: source.to_owned(),
            obj,
        });
    }
    docs
}

/// Every document of every `deploy/*.yaml`, then of `deploy/examples/*.yaml`,
/// files in name order.
fn deploy_docs() -> Vec<Doc> {
    let mut docs = Vec::new();
    for sub in ["deploy", "deploy/examples"] {
        let dir = root().join(sub);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let name = format!("{sub}/{}", f.file_name().unwrap().to_string_lossy());
            docs.extend(parse_docs(&name, &text));
        }
    }
    docs
}

/// Resolves kinds to API resources by discovery (cached per GVK).
struct Resolver {
    client: Client,
    cache: BTreeMap<(String, String), (ApiResource, ApiCapabilities)>,
}

impl Resolver {
    fn new(client: Client) -> Resolver {
        Resolver {
            client,
            cache: BTreeMap::new(),
        }
    }

    /// The API resource of `obj`'s kind. Retries (bounded) so a CRD that just
    /// became Established has time to appear in discovery.
    async fn resolve(&mut self, obj: &DynamicObject) -> (ApiResource, ApiCapabilities) {
        let types = obj.types.clone().expect("apiVersion/kind");
        let key = (types.api_version.clone(), types.kind.clone());
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let gvk = GroupVersionKind::try_from(&types).expect("a valid apiVersion");
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            match discovery::pinned_kind(&self.client, &gvk).await {
                Ok(found) => break found,
                Err(e) if Instant::now() > deadline => {
                    panic!("discovery does not know {gvk:?}: {e}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        };
        self.cache.insert(key, found.clone());
        found
    }

    /// A dynamic Api for `obj`: namespaced ones in their namespace (or
    /// `default_ns` when the manifest leaves it to the client).
    async fn api(&mut self, obj: &DynamicObject, default_ns: &str) -> Api<DynamicObject> {
        let (ar, caps) = self.resolve(obj).await;
        match caps.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
            Scope::Namespaced => {
                let ns = obj.metadata.namespace.as_deref().unwrap_or(default_ns);
                Api::namespaced_with(self.client.clone(), ns, &ar)
            }
        }
    }

    async fn is_namespaced(&mut self, obj: &DynamicObject) -> bool {
        matches!(self.resolve(obj).await.1.scope, Scope::Namespaced)
    }
}

/// Server-side apply as `kubectl apply --server-side` does: our field manager,
/// strict field validation (unknown or duplicate fields are errors).
fn apply_params(dry_run: bool) -> PatchParams {
    let pp = PatchParams::apply(MANAGER).validation_strict();
    if dry_run { pp.dry_run() } else { pp }
}

async fn apply(
    resolver: &mut Resolver,
    obj: &DynamicObject,
    default_ns: &str,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let api = resolver.api(obj, default_ns).await;
    api.patch(&obj.name_any(), &apply_params(dry_run), &Patch::Apply(obj))
        .await
}

/// Applies every CRD for real and waits (bounded) until each is Established.
async fn apply_crds_for_real(client: &Client, resolver: &mut Resolver, docs: &[Doc]) -> usize {
    let crds: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "CustomResourceDefinition")
        .collect();
    for d in &crds {
        apply(resolver, &d.obj, "default", false)
            .await
            .unwrap_or_else(|e| panic!("apply {} for real: {e}", d.label()));
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for d in &crds {
        let name = d.obj.name_any();
        let deadline = Instant::now() + ESTABLISHED_TIMEOUT;
        loop {
            let crd = api.get(&name).await.unwrap();
            let conditions = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not Established within {ESTABLISHED_TIMEOUT:?}: {conditions:?}",
                d.label()
            );
            tokio::time::sleep(POLL).await;
        }
    }
    crds.len()
}

/// Creates a namespace for real unless it exists.
async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// The whole procedure for one set of manifests: CRDs for real, Namespace
/// objects for real, every namespace the rest use created, then every other
/// object dry-run applied; all must be accepted, and none may be stored.
/// Returns the dry-run responses by label.
async fn validate_set(
    client: &Client,
    resolver: &mut Resolver,
    docs: &[Doc],
    default_ns: &str,
) -> Vec<(String, DynamicObject)> {
    let t = Instant::now();
    let crds = apply_crds_for_real(client, resolver, docs).await;

    let mut namespaces = BTreeSet::new();
    for d in docs.iter().filter(|d| d.kind() == "Namespace") {
        apply(resolver, &d.obj, default_ns, false)
            .await
            .unwrap_or_else(|e| panic!("apply {} for real: {e}", d.label()));
        namespaces.insert(d.obj.name_any());
    }
    let rest: Vec<&Doc> = docs
        .iter()
        .filter(|d| !matches!(d.kind(), "CustomResourceDefinition" | "Namespace"))
        .collect();
    for d in &rest {
        if resolver.is_namespaced(&d.obj).await {
            let ns = d.obj.metadata.namespace.as_deref().unwrap_or(default_ns);
            if namespaces.insert(ns.to_owned()) {
                ensure_namespace(client, ns).await;
            }
        }
    }

    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for d in &rest {
        match apply(resolver, &d.obj, default_ns, true).await {
            Ok(out) => {
                assert_eq!(out.name_any(), d.obj.name_any(), "{}", d.label());
                accepted.push((d.label(), out));
            }
            Err(e) => rejected.push(format!("{}: {e}", d.label())),
        }
    }
    assert!(
        rejected.is_empty(),
        "the apiserver rejected {} of {} objects:\n{}",
        rejected.len(),
        rest.len(),
        rejected.join("\n")
    );
    // A dry run stores nothing.
    for d in &rest {
        let api = resolver.api(&d.obj, default_ns).await;
        assert!(
            api.get_opt(&d.obj.name_any()).await.unwrap().is_none(),
            "{} was stored by a dry run",
            d.label()
        );
    }
    eprintln!(
        "{} CRD(s) applied and Established, namespaces {namespaces:?} exist, \
         {} object(s) accepted by a server-side dry run in {:.1?}:",
        crds,
        accepted.len(),
        t.elapsed()
    );
    for (label, _) in &accepted {
        eprintln!("  accepted: {label}");
    }
    accepted
}

fn kinds(docs: &[Doc]) -> BTreeSet<String> {
    docs.iter().map(|d| d.kind().to_owned()).collect()
}

fn assert_has_kinds(what: &str, docs: &[Doc], expected: &[&str]) {
    let have = kinds(docs);
    for k in expected {
        assert!(have.contains(*k), "{what}: no {k} among {have:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_accepted_by_a_real_apiserver() {
    // Parse before starting anything: a YAML error needs no cluster to report.
    let deploy = deploy_docs();
    let helm = tool("helm", "PRIVREG_HELM");
    let charts: Vec<(&ChartRender, Vec<Doc>)> = match &helm {
        Some(helm) => [&CHART_CLUSTER_WIDE, &CHART_NAMESPACED]
            .into_iter()
            .map(|render| (render, helm_template(helm, render)))
            .collect(),
        None => Vec::new(),
    };
    let Some(cp) = ControlPlane::start().await else {
        return;
    };
    let t = Instant::now();
    let client = cp.client().await;
    let mut resolver = Resolver::new(client.clone());

    deploy_manifests(&client, &mut resolver, &deploy).await;
    if helm.is_none() {
        eprintln!("SKIPPED: the Helm chart part (no helm)");
    }
    for (render, docs) in &charts {
        chart_manifests(&client, &mut resolver, render, docs).await;
    }

    // team-b, which namespaced mode does not watch, exists as in a real cluster.
    ensure_namespace(&client, UNWATCHED).await;
    let deploy_rbac = rbac_docs(&deploy);
    assert!(
        deploy_rbac.len() >= 5
            && deploy_rbac
                .iter()
                .all(|d| d.source == "deploy/02-rbac.yaml"),
        "RBAC outside deploy/02-rbac.yaml, or too little: {:?}",
        deploy_rbac.iter().map(|d| d.label()).collect::<Vec<_>>()
    );
    let mut cases = vec![(
        "deploy/02-rbac.yaml",
        deploy_rbac,
        DEPLOY_OPERATOR,
        cluster_wide(DEPLOY_OPERATOR.namespace),
    )];
    for (render, docs) in &charts {
        cases.push((
            render.what,
            rbac_docs(docs),
            render.operator,
            render.expect(),
        ));
    }
    for (what, rbac, sa, expect) in &cases {
        operator_rbac(&client, &mut resolver, what, rbac, *sa, expect).await;
    }
    eprintln!(
        "all checks took {:.1?} after the control plane started",
        t.elapsed()
    );
}

// --- 1. deploy/*.yaml ---------------------------------------------------------

async fn deploy_manifests(client: &Client, resolver: &mut Resolver, docs: &[Doc]) {
    assert_has_kinds(
        "deploy/*.yaml",
        docs,
        &[
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "PrivateRegistry",
        ],
    );
    let accepted = validate_set(client, resolver, docs, "default").await;

    // The example went through the CRD's structural schema: its defaults are
    // filled in by the server.
    let (_, example) = accepted
        .iter()
        .find(|(label, _)| label.contains("deploy/examples/minimal.yaml"))
        .expect("deploy/examples/minimal.yaml was dry-run applied");
    assert_eq!(
        example.data["spec"]["trust"]["enabled"],
        json!(true),
        "CRD defaults were not applied: {:?}",
        example.data
    );
    // And the Deployment through the apps/v1 defaulting.
    let (_, deployment) = accepted
        .iter()
        .find(|(label, _)| label.starts_with("Deployment "))
        .unwrap();
    assert_eq!(
        deployment.data["spec"]["strategy"]["type"],
        json!("RollingUpdate"),
        "{:?}",
        deployment.data
    );

    negative_controls(resolver, docs).await;
}

/// One field of an otherwise accepted object made invalid: the dry run must be
/// refused, for that field.
struct Bad {
    name: &'static str,
    pointer: &'static str,
    value: Value,
    /// The field path the apiserver names, and the (code, reason)s it may answer.
    field: &'static str,
    answers: &'static [(u16, &'static str)],
}

async fn negative_controls(resolver: &mut Resolver, docs: &[Doc]) {
    let example = docs
        .iter()
        .find(|d| d.kind() == "PrivateRegistry")
        .expect("an example PrivateRegistry");
    let deployment = docs.iter().find(|d| d.kind() == "Deployment").unwrap();
    let invalid = |name, pointer, value, field| Bad {
        name,
        pointer,
        value,
        field,
        answers: &[(422, "Invalid")],
    };
    let registry_cases = [
        invalid("bad-port", "/spec/port", json!(70000), "spec.port"),
        invalid(
            "bad-hostname",
            "/spec/hostname",
            json!("Not_A_Host"),
            "spec.hostname",
        ),
        invalid(
            "bad-validity",
            "/spec/tls/cert/validity",
            json!("10d"),
            "spec.tls.cert.validity",
        ),
        invalid(
            "bad-size",
            "/spec/storage/size",
            json!("lots"),
            "spec.storage.size",
        ),
        invalid(
            "bad-service-type",
            "/spec/service/type",
            json!("ExternalName"),
            "spec.service.type",
        ),
        // A misspelt field is an error, not silently dropped. kube-apiserver
        // v1.34 answers this server-side apply error with a bare 500
        // (kubernetes/kubernetes#139253); 400 BadRequest once that is fixed.
        Bad {
            name: "unknown-field",
            pointer: "/spec/prot",
            value: json!(5000),
            field: ".spec.prot: field not declared in schema",
            answers: &[(500, ""), (400, "BadRequest")],
        },
    ];
    for case in &registry_cases {
        expect_rejected(resolver, &example.obj, case).await;
    }
    // A built-in kind is validated too (apps/v1 Deployment).
    let deployment_case = invalid(
        "privreg-operator",
        "/spec/replicas",
        json!(-1),
        "spec.replicas",
    );
    expect_rejected(resolver, &deployment.obj, &deployment_case).await;
}

fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut at = root;
    for part in parent.split('/').skip(1) {
        if !at[part].is_object() {
            at[part] = json!({});
        }
        at = &mut at[part];
    }
    at[key] = value;
}

async fn expect_rejected(resolver: &mut Resolver, base: &DynamicObject, case: &Bad) {
    let mut value = serde_json::to_value(base).unwrap();
    value["metadata"]["name"] = json!(case.name);
    set_pointer(&mut value, case.pointer, case.value.clone());
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    let what = format!(
        "{} {} with {} = {}",
        obj.types.as_ref().unwrap().kind,
        case.name,
        case.pointer,
        case.value
    );
    match apply(resolver, &obj, "default", true).await {
        Ok(out) => panic!("{what} was accepted: {:?}", out.data),
        Err(kube::Error::Api(s)) => {
            eprintln!(
                "rejected as expected: {what}: {} {}: {}",
                s.code, s.reason, s.message
            );
            assert!(
                case.answers.contains(&(s.code, s.reason.as_str())),
                "{what}: answered {} {:?}, expected one of {:?}: {s:?}",
                s.code,
                s.reason,
                case.answers
            );
            let causes: Vec<(&str, &str)> = s
                .details
                .as_ref()
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| (c.field.as_str(), c.message.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                causes.iter().any(|(f, _)| *f == case.field) || s.message.contains(case.field),
                "{what}: rejected, but not for {}: {s:?}",
                case.field
            );
            // Nothing else about the object was wrong. A CEL rule of an
            // enclosing object that reads the bad field fails with it, and is
            // reported at that object; rules skipped because of it are
            // reported without a field.
            let about_the_field = |(field, message): &(&str, &str)| {
                field.is_empty()
                    || *field == case.field
                    || case
                        .field
                        .strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with('.'))
                    || (*field == "<nil>" && message.contains("validation rules were not checked"))
            };
            assert!(
                causes.iter().all(about_the_field),
                "{what}: more fields rejected than {}: {causes:?}",
                case.field
            );
        }
        Err(e) => panic!("{what}: not an API error: {e}"),
    }
}

// --- 2. the Helm chart --------------------------------------------------------

/// One way of rendering the chart, and whose RBAC it is.
struct ChartRender {
    what: &'static str,
    sets: &'static [&'static str],
    operator: ServiceAccount,
    /// The default: a ClusterRole. Otherwise `watchNamespaces` is set and no
    /// RBAC object the chart renders may be cluster-scoped.
    cluster_wide: bool,
}

const CHART_CLUSTER_WIDE: ChartRender = ChartRender {
    what: "helm template charts/privreg",
    sets: &[],
    operator: ServiceAccount {
        namespace: OPERATOR_NAMESPACE,
        name: "t-operator",
    },
    cluster_wide: true,
};

/// Watching WATCHED, which `namespaced()` expects.
const CHART_NAMESPACED: ChartRender = ChartRender {
    what: "helm template charts/privreg --set watchNamespaces={team-a}",
    sets: &["watchNamespaces={team-a}"],
    operator: ServiceAccount {
        namespace: SCOPED_NAMESPACE,
        name: "t-operator",
    },
    cluster_wide: false,
};

impl ChartRender {
    /// What its RBAC must and must not allow.
    fn expect(&self) -> Expect {
        if self.cluster_wide {
            cluster_wide(self.operator.namespace)
        } else {
            namespaced(self.operator.namespace)
        }
    }
}

fn helm_template(helm: &Path, render: &ChartRender) -> Vec<Doc> {
    let chart = root().join("charts/privreg");
    let mut cmd = Command::new(helm);
    cmd.args(["template", CHART_RELEASE])
        .arg(chart)
        .args(["--namespace", render.operator.namespace, "--include-crds"])
        .args(["--kube-version", "1.34.0"]);
    for s in render.sets {
        cmd.args(["--set", s]);
    }
    let text = String::from_utf8(run(&mut cmd).stdout).expect("helm template output is UTF-8");
    parse_docs(render.what, &text)
}

async fn chart_manifests(
    client: &Client,
    resolver: &mut Resolver,
    render: &ChartRender,
    docs: &[Doc],
) {
    let mut expected = vec![
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    ];
    if render.cluster_wide {
        expected.extend(["ClusterRole", "ClusterRoleBinding"]);
    }
    assert_has_kinds(render.what, docs, &expected);
    let accepted = validate_set(client, resolver, docs, render.operator.namespace).await;
    let rendered = docs
        .iter()
        .filter(|d| !matches!(d.kind(), "CustomResourceDefinition" | "Namespace"))
        .count();
    assert_eq!(accepted.len(), rendered);
    if !render.cluster_wide {
        // As the apiserver sees it: no cluster-scoped RBAC.
        for d in rbac_docs(docs) {
            assert!(
                resolver.is_namespaced(&d.obj).await,
                "{} is cluster-scoped",
                d.label()
            );
        }
    }
}

// --- 3. the operator's RBAC ---------------------------------------------------

/// The operator's identity: a ServiceAccount.
#[derive(Clone, Copy)]
struct ServiceAccount {
    namespace: &'static str,
    name: &'static str,
}

impl ServiceAccount {
    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

const DEPLOY_OPERATOR: ServiceAccount = ServiceAccount {
    namespace: OPERATOR_NAMESPACE,
    name: "privreg-operator",
};

/// One SubjectAccessReview question.
struct Access {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: &'static str,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if self.namespace.is_empty() {
            write!(f, " (all namespaces)")
        } else {
            write!(f, " in {}", self.namespace)
        }
    }
}

const fn access(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: &'static str,
) -> Access {
    Access {
        verb,
        group,
        resource,
        subresource,
        namespace,
    }
}

/// Every verb on every (group, resource) in every namespace ("" = all).
fn grid(
    verbs: &[&'static str],
    resources: &[(&'static str, &'static str)],
    namespaces: &[&'static str],
) -> Vec<Access> {
    let mut out = Vec::new();
    for &namespace in namespaces {
        for &(group, resource) in resources {
            for &verb in verbs {
                out.push(access(verb, group, resource, "", namespace));
            }
        }
    }
    out
}

/// What a PrivateRegistry's children are made of.
const CHILDREN: &[(&str, &str)] = &[
    ("", "secrets"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("", "configmaps"),
    ("apps", "deployments"),
];
/// The verbs the operator has on them: server-side apply (patch), create, reads.
const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch"];
const REGISTRIES: (&str, &str) = ("privreg.dev", "privateregistries");
const LEASES: (&str, &str) = ("coordination.k8s.io", "leases");
const CONFIGMAPS: (&str, &str) = ("", "configmaps");

/// What the operator's RBAC must allow, and must not.
struct Expect {
    may: Vec<Access>,
    may_not: Vec<Access>,
}

/// What a registry in `ns` needs: its children, itself, its status, Events.
fn registry_work(ns: &'static str) -> Vec<Access> {
    let mut v = grid(CHILD_VERBS, CHILDREN, &[ns]);
    v.extend(grid(&["get", "list", "watch"], &[REGISTRIES], &[ns]));
    for verb in ["get", "patch", "update"] {
        v.push(access(verb, REGISTRIES.0, REGISTRIES.1, "status", ns));
    }
    v.extend(grid(
        &["create", "patch"],
        &[("events.k8s.io", "events")],
        &[ns],
    ));
    // Why a registry pod fails: a list and watch by label, nothing more.
    v.extend(grid(&["list", "watch"], &[PODS], &[ns]));
    // The disruption budget of a registry with several pods: applied, not watched.
    v.extend(grid(&["get", "create", "patch"], &[BUDGETS], &[ns]));
    v
}

const BUDGETS: (&str, &str) = ("policy", "poddisruptionbudgets");

const DAEMONSETS: (&str, &str) = ("apps", "daemonsets");
const PODS: (&str, &str) = ("", "pods");

/// The trust DaemonSet and reading its pods: the operator's namespace only.
fn trust_work(own: &'static str) -> Vec<Access> {
    let mut v = grid(CHILD_VERBS, &[DAEMONSETS], &[own]);
    v.extend(grid(&["get", "list", "watch"], &[PODS], &[own]));
    v
}

/// Never, in any mode: deleting (the garbage collector does it), reading a pod
/// by name outside the operator's namespace (`own`; a list or watch by label
/// is allowed), DaemonSets elsewhere, the spec of a PrivateRegistry,
/// core Events, RBAC, cluster-scoped reads.
fn never(namespaces: &[&'static str], own: &'static str) -> Vec<Access> {
    let mut resources = CHILDREN.to_vec();
    resources.extend([REGISTRIES, LEASES, DAEMONSETS, PODS, BUDGETS]);
    let mut v = grid(&["delete", "deletecollection"], &resources, namespaces);
    let others: Vec<&'static str> = namespaces.iter().copied().filter(|n| *n != own).collect();
    v.extend(grid(&["get"], &[PODS], &others));
    v.extend(grid(&["get", "create", "patch"], &[DAEMONSETS], &others));
    v.extend(grid(&["update"], &[PODS], &[own]));
    v.extend(grid(&["patch", "update"], &[REGISTRIES], namespaces));
    v.extend(grid(&["create"], &[("", "events")], namespaces));
    v.extend([
        access("list", "", "namespaces", "", ""),
        access("get", "", "nodes", "", ""),
        access(
            "get",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "",
        ),
        access(
            "escalate",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            "",
        ),
        access(
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            "",
            "default",
        ),
    ]);
    v
}

/// Cluster-wide mode (deploy/02-rbac.yaml, the chart's default): registries in
/// every namespace; the Lease in the operator's namespace only.
fn cluster_wide(own: &'static str) -> Expect {
    let mut may = registry_work("default");
    may.extend(registry_work(own));
    // Every namespace at once: the controller's watches.
    may.extend(grid(&["list", "watch"], CHILDREN, &[""]));
    may.extend(grid(&["list", "watch"], &[REGISTRIES], &[""]));
    may.extend(grid(&["get", "create", "update"], &[LEASES], &[own]));
    may.extend(trust_work(own));
    let mut may_not = never(&["default", own], own);
    may_not.extend(grid(
        &["create", "update"],
        &[LEASES],
        &["default", "kube-system"],
    ));
    Expect { may, may_not }
}

/// Namespaced mode (the chart with `watchNamespaces={team-a}`): registries in
/// team-a only; the operator's namespace holds the Lease and the trust bundle
/// ConfigMap, and nothing else of it is granted.
fn namespaced(own: &'static str) -> Expect {
    let mut may = registry_work(WATCHED);
    may.extend(grid(&["get", "create", "update"], &[LEASES], &[own]));
    may.extend(grid(CHILD_VERBS, &[CONFIGMAPS], &[own]));
    may.extend(trust_work(own));

    let mut may_not = never(&[WATCHED, UNWATCHED, own], own);
    // Not a namespace it does not watch, nor all of them at once.
    may_not.extend(registry_work(UNWATCHED));
    may_not.extend(grid(&["list", "watch"], CHILDREN, &[""]));
    may_not.extend(grid(&["list", "watch"], &[REGISTRIES], &[""]));
    may_not.push(access("list", "", "pods", "", ""));
    // In its own namespace, the trust bundle ConfigMap and the Lease only.
    let mut children_but_configmaps = CHILDREN.to_vec();
    children_but_configmaps.retain(|r| *r != CONFIGMAPS);
    may_not.extend(grid(CHILD_VERBS, &children_but_configmaps, &[own]));
    may_not.extend(grid(&["get", "list"], &[REGISTRIES], &[own]));
    // The Lease and the trust bundle: nowhere but the operator's namespace
    // (a watched namespace's ConfigMaps are the registries' CA ConfigMaps).
    may_not.extend(grid(
        &["get", "create", "update"],
        &[LEASES],
        &[WATCHED, UNWATCHED, "default", ""],
    ));
    may_not.extend(grid(
        &["create", "patch"],
        &[CONFIGMAPS],
        &["default", "kube-system", ""],
    ));
    Expect { may, may_not }
}

/// Whether `sa` (with the groups a pod's token carries) may do `a`, and the
/// authorizer's reason.
async fn allowed(client: &Client, sa: ServiceAccount, a: &Access) -> (bool, String) {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(sa.user()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", sa.namespace),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(a.verb.into()),
                group: Some(a.group.into()),
                resource: Some(a.resource.into()),
                subresource: opt(a.subresource),
                namespace: opt(a.namespace),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let status = api
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SubjectAccessReview {a}: {e}"))
        .status
        .expect("SubjectAccessReview status");
    (status.allowed, status.reason.unwrap_or_default())
}

/// The questions of `list` whose answer is `answer`, with the reasons.
async fn answered(
    client: &Client,
    sa: ServiceAccount,
    list: &[Access],
    answer: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for a in list {
        let (ok, reason) = allowed(client, sa, a).await;
        if ok == answer {
            out.push(format!("{a} ({reason})"));
        }
    }
    out
}

/// The RBAC objects among `docs`.
fn rbac_docs(docs: &[Doc]) -> Vec<&Doc> {
    docs.iter()
        .filter(|d| {
            matches!(
                d.kind(),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
        })
        .collect()
}

/// Applies `rbac` for real and proves with SubjectAccessReviews that `sa` may
/// do exactly what `expect` says: nothing of `may` before, all of it after,
/// none of `may_not`.
async fn operator_rbac(
    client: &Client,
    resolver: &mut Resolver,
    what: &str,
    rbac: &[&Doc],
    sa: ServiceAccount,
    expect: &Expect,
) {
    let user = sa.user();
    assert!(
        rbac.iter().any(|d| d.kind() == "ServiceAccount"
            && d.obj.name_any() == sa.name
            && d.obj.metadata.namespace.as_deref() == Some(sa.namespace)),
        "{what} has no ServiceAccount {}/{}",
        sa.namespace,
        sa.name
    );
    // Control: the dry runs granted nothing, so whatever is allowed below is
    // allowed by the objects applied here.
    let before = answered(client, sa, &expect.may, true).await;
    assert!(
        before.is_empty(),
        "{user} may before {what} is applied:\n{}",
        before.join("\n")
    );
    for d in rbac {
        apply(resolver, &d.obj, sa.namespace, false)
            .await
            .unwrap_or_else(|e| panic!("apply {} for real: {e}", d.label()));
    }

    // The RBAC authorizer sees new bindings through an informer: wait
    // (bounded) until every grant is in effect.
    let deadline = Instant::now() + RBAC_TIMEOUT;
    loop {
        let missing = answered(client, sa, &expect.may, false).await;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {user} is not allowed to:\n{}",
            missing.join("\n")
        );
        tokio::time::sleep(POLL).await;
    }
    let wrongly = answered(client, sa, &expect.may_not, true).await;
    assert!(
        wrongly.is_empty(),
        "{what}: {user} is allowed to:\n{}",
        wrongly.join("\n")
    );
    eprintln!(
        "RBAC of {what} ({} objects applied): {user} may all {} and none of {} \
         (SubjectAccessReviews)",
        rbac.len(),
        expect.may.len(),
        expect.may_not.len(),
    );
}

/// The image reference has one source, Cargo.toml (`[package.metadata.privreg]
/// image` and the version, which scripts/image.py tags): the operator's default
/// `--image`, deploy/03-operator.yaml and the chart follow it.
#[test]
fn the_image_reference_comes_from_cargo_toml() {
    let cargo: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let package = &cargo["package"];
    let version = package["version"].as_str().unwrap();
    let repository = package["metadata"]["privreg"]["image"].as_str().unwrap();
    let reference = format!("{repository}:{version}");

    let deploy = std::fs::read_to_string(root().join("deploy/03-operator.yaml")).unwrap();
    assert!(
        deploy.contains(&format!("image: {reference}")),
        "deploy/03-operator.yaml runs {reference}"
    );
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("charts/privreg/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["appVersion"], json!(version), "Chart.yaml appVersion");
    assert_eq!(chart["version"], json!(version), "Chart.yaml version");
    let values: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("charts/privreg/values.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        values["image"]["repository"],
        json!(repository),
        "values.yaml image.repository"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_privreg"))
        .args(["operator", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains(&format!("[default: {reference}]")),
        "privreg operator's default --image is {reference}:\n{help}"
    );
}
