//! Why a registry has no available pod, in one line for its status and an
//! Event: the kubelet's reason (CrashLoopBackOff, ImagePullBackOff,
//! Unschedulable, ...) and, for a container that exited, its exit code and the
//! last line it wrote (the container's termination message falls back to its
//! log, so `privreg serve`'s own error, e.g. `Permission denied` on a volume
//! the registry's uid cannot write, reaches the PrivateRegistry's status).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Reasons a container waits that will not clear by waiting.
const FAILING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// At most this many characters of a message go into the status.
const MAX_MESSAGE: usize = 300;

/// The first problem among `pods` (the registry's), or None while they are
/// merely starting.
pub fn describe(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(pod)
}

fn pod(p: &Pod) -> Option<String> {
    let status = p.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(format!(
            "Unschedulable: {}",
            bounded(c.message.as_deref().unwrap_or(""))
        ));
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .find_map(container)
}

fn container(cs: &ContainerStatus) -> Option<String> {
    let waiting = cs.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if !FAILING.contains(&reason) {
        return None;
    }
    let mut line = reason.to_owned();
    if let Some(last) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        line.push_str(&format!(" (exited {}", last.exit_code));
        if let Some(msg) = last.message.as_deref().and_then(last_line) {
            line.push_str(&format!(": {}", bounded(&msg)));
        }
        line.push(')');
    } else if let Some(msg) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(&format!(": {}", bounded(msg)));
    }
    Some(line)
}

/// The last non-empty line; for a JSON log line (privreg's `--log-format
/// json`), its `error` field, else its message.
fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let from_json = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            let fields = &v["fields"];
            fields["error"]
                .as_str()
                .or_else(|| fields["message"].as_str())
                .map(str::to_owned)
        });
    Some(from_json.unwrap_or_else(|| line.to_owned()))
}

/// `text` with control characters removed and cut at [`MAX_MESSAGE`]
/// characters (on a character boundary).
fn bounded(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_crash_loop_reports_the_exit_and_the_last_log_line() {
        // As the kubelet reports a registry that cannot create its data
        // directory on a root-owned hostPath volume.
        let p = pod(serde_json::json!({
            "metadata": {"name": "registry-7d9c-x"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "registry", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                    "message": "back-off 40s restarting failed container=registry"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "{\"level\":\"INFO\",\"fields\":{\"message\":\"starting\"}}\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"privreg exits on an error\",\"error\":\"opening the data directory: Permission denied (os error 13)\"}}\n"}}
            }]}
        }));
        let d = describe(&[p]).unwrap();
        assert!(d.starts_with("CrashLoopBackOff (exited 1: "), "{d}");
        assert_eq!(
            d,
            "CrashLoopBackOff (exited 1: opening the data directory: Permission denied (os error 13))"
        );
        assert!(!d.contains('\n'));
    }

    #[test]
    fn image_pull_and_scheduling_problems_are_named_and_starting_is_not_a_problem() {
        let pull = pod(serde_json::json!({"status": {"containerStatuses": [{
            "name": "registry", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/privreg/privreg:9\""}}
        }]}}));
        assert_eq!(
            describe(&[pull]).as_deref(),
            Some("ImagePullBackOff: Back-off pulling image \"ghcr.io/privreg/privreg:9\"")
        );
        let pending = pod(
            serde_json::json!({"status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity."
            }]}}),
        );
        assert!(
            describe(&[pending])
                .unwrap()
                .starts_with("Unschedulable: 0/1 nodes")
        );
        let starting = pod(serde_json::json!({"status": {"containerStatuses": [{
            "name": "registry", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "ContainerCreating"}}
        }]}}));
        assert_eq!(describe(&[starting]), None);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let b = bounded(&long);
        assert_eq!(b.chars().count(), MAX_MESSAGE + 1);
        assert!(b.ends_with('…'));
    }
}
