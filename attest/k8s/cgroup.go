package k8s

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// podSegment matches the cgroup directory of a pod, in both cgroup
// drivers: "pod<uid>" (cgroupfs) and "kubepods[-<qos>]-pod<uid>.slice"
// (systemd, where the UID's dashes become underscores). Static pods have a
// 32-hex UID.
var podSegment = regexp.MustCompile(`^(?:[a-z0-9_-]*-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})(?:\.slice)?$`)

// containerSegment matches the cgroup directory of a container:
// "<id>" (cgroupfs) or "<runtime>-<id>.scope" (systemd), id being 64 hex.
// Runtime helpers such as crio-conmon-<id>.scope do not match.
var containerSegment = regexp.MustCompile(`^(?:(?:docker|cri-containerd|containerd|crio|cri-o|cri-dockerd|libpod)-)?([0-9a-f]{64})(?:\.scope)?$`)

// maxCgroupSize bounds /proc/<pid>/cgroup.
const maxCgroupSize = 64 << 10

// parseCgroupLine extracts the pod UID (dashed, lowercase) and the
// container ID (64 hex, or "" when the process is in the pod's cgroup but
// no container's) from one line of /proc/<pid>/cgroup:
//
//	12:memory:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961
//	0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope
//
// ok is false when the line names no pod. A pod is recognised only under
// a kubepods cgroup (in the pod's segment, its parent or grandparent) and
// never under user.slice or a user@ service, the subtrees systemd
// delegates to unprivileged users, where anyone could create a cgroup
// named like another pod's.
func parseCgroupLine(line string) (podUID, containerID string, ok bool) {
	parts := strings.SplitN(line, ":", 3)
	if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
		return "", "", false
	}
	segs := strings.Split(parts[2], "/")
	for i, seg := range segs {
		if seg == "user.slice" || strings.HasPrefix(seg, "user@") {
			return "", "", false
		}
		m := podSegment.FindStringSubmatch(seg)
		if m == nil {
			continue
		}
		underKubepods := false
		for j := max(0, i-2); j <= i; j++ {
			if strings.Contains(segs[j], "kubepods") {
				underKubepods = true
			}
		}
		if !underKubepods {
			continue
		}
		podUID = strings.ReplaceAll(m[1], "_", "-")
		if i+1 < len(segs) {
			if c := containerSegment.FindStringSubmatch(segs[i+1]); c != nil {
				containerID = c[1]
			}
		}
		for _, rest := range segs[i+1:] {
			if rest == "user.slice" || strings.HasPrefix(rest, "user@") {
				return "", "", false
			}
		}
		return podUID, containerID, true
	}
	return "", "", false
}

// parseCgroups reads a whole /proc/<pid>/cgroup file (one line for cgroup
// v2, one per hierarchy for v1). Every line that names a pod must name the
// same pod and container. An empty podUID means the process is not in a
// pod.
func parseCgroups(data []byte) (podUID, containerID string, err error) {
	for raw := range bytes.Lines(data) {
		line := strings.TrimRight(string(raw), "\r\n")
		pod, cid, ok := parseCgroupLine(line)
		if !ok {
			continue
		}
		switch {
		case podUID == "":
			podUID, containerID = pod, cid
		case pod != podUID:
			return "", "", errors.New("cgroup hierarchies name different pods")
		case cid != containerID:
			if containerID == "" {
				containerID = cid
			} else if cid != "" {
				return "", "", fmt.Errorf("cgroup hierarchies name different containers of pod %s", podUID)
			}
		}
	}
	return podUID, containerID, nil
}
