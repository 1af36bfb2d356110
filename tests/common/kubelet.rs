//! The kubelet's API writes, for tests that play it (no kubelet runs in the
//! test control plane): the Node object, binding a pod to it, and reporting the
//! pod Running and Ready once the test has started its container's process.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// Creates the Node object (ReplicaSets and DaemonSets schedule onto these).
pub async fn ensure_node(admin: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(admin.clone());
    if nodes.get_opt(name).await.unwrap().is_none() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
}

/// Binds `pod` to `node` (the scheduler's part), unless it is bound already.
pub async fn bind(admin: &Client, pod: &Pod, node: &str) {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some()
    {
        return;
    }
    let (namespace, name) = (pod.namespace().unwrap(), pod.name_any());
    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}
    });
    let req = axum::http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/pods/{name}/binding"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&binding).unwrap())
    .unwrap();
    admin.request_text(req).await.unwrap();
}

/// Reports `pod` Running and Ready (its readiness probe passed), with
/// `pod_ip` if given.
pub async fn report_ready(admin: &Client, pod: &Pod, pod_ip: Option<&str>) {
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut status = serde_json::json!({
        "phase": "Running",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now}
        ],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "ready": true,
            "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}
        }]
    });
    if let Some(ip) = pod_ip {
        status["podIP"] = ip.into();
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &pod.namespace().unwrap());
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": status })),
    )
    .await
    .unwrap();
}
