package k8s

import (
	"regexp"
	"strings"
	"testing"
)

const (
	uid    = "2c48913c-b29f-11e7-9350-020968147796"
	uidSD  = "2c48913c_b29f_11e7_9350_020968147796"
	cid    = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
	static = "5f3b8b1c0d5e4a7f9c2e1d0a6b4c8e7f"
)

func TestParseCgroupLine(t *testing.T) {
	tests := []struct {
		name, line string
		pod, cid   string
		ok         bool
	}{
		{name: "ok/v1-cgroupfs", line: "12:memory:/kubepods/burstable/pod" + uid + "/" + cid, pod: uid, cid: cid, ok: true},
		{name: "ok/v1-cgroupfs-guaranteed", line: "4:cpu,cpuacct:/kubepods/pod" + uid + "/" + cid, pod: uid, cid: cid, ok: true},
		{name: "ok/v1-systemd", line: "1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSD + ".slice/docker-" + cid + ".scope", pod: uid, cid: cid, ok: true},
		{name: "ok/v2-systemd-containerd", line: "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope", pod: uid, cid: cid, ok: true},
		{name: "ok/v2-systemd-crio", line: "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSD + ".slice/crio-" + cid + ".scope", pod: uid, cid: cid, ok: true},
		{name: "ok/v2-systemd-guaranteed", line: "0::/kubepods.slice/kubepods-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope", pod: uid, cid: cid, ok: true},
		{name: "ok/v2-cgroupfs", line: "0::/kubepods/besteffort/pod" + uid + "/" + cid, pod: uid, cid: cid, ok: true},
		{name: "ok/v2-nested-scope", line: "0::/kubepods/besteffort/pod" + uid + "/" + cid + "/init.scope", pod: uid, cid: cid, ok: true},
		{name: "ok/static-pod", line: "0::/kubepods/besteffort/pod" + static + "/" + cid, pod: static, cid: cid, ok: true},
		{name: "ok/kind-kubelet-root", line: "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope", pod: uid, cid: cid, ok: true},
		{name: "ok/docker-in-docker", line: "0::/docker/" + cid + "/kubepods/besteffort/pod" + uid + "/" + cid, pod: uid, cid: cid, ok: true},
		{name: "ok/cgroupns-relative", line: "0::/../../kubepods-besteffort-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope", pod: uid, cid: cid, ok: true},
		{name: "ok/pod-level-only", line: "0::/kubepods/besteffort/pod" + uid, pod: uid, ok: true},
		{name: "ok/conmon-is-no-container", line: "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSD + ".slice/crio-conmon-" + cid + ".scope", pod: uid, ok: true},
		{name: "fail/host-process", line: "0::/system.slice/containerd.service"},
		{name: "fail/root", line: "0::/"},
		{name: "fail/not-under-kubepods", line: "0::/pod" + uid + "/" + cid},
		{name: "fail/kubepods-too-far-up", line: "0::/kubepods/a/b/pod" + uid + "/" + cid},
		{name: "fail/user-delegated", line: "0::/user.slice/user-1000.slice/user@1000.service/kubepods/pod" + uid + "/" + cid},
		{name: "fail/user-delegated-below", line: "0::/kubepods/besteffort/pod" + uid + "/" + cid + "/user@1000.service"},
		{name: "fail/uppercase-uid", line: "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid},
		{name: "fail/short-uid", line: "0::/kubepods/pod2c48913c-b29f-11e7-9350/" + cid},
		{name: "fail/no-path", line: "0::kubepods/pod" + uid},
		{name: "fail/two-fields", line: "0:/kubepods/pod" + uid},
		{name: "fail/empty", line: ""},
		{name: "ok/short-container-id", line: "0::/kubepods/pod" + uid + "/" + cid[:63], pod: uid, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, c, ok := parseCgroupLine(tt.line)
			if pod != tt.pod || c != tt.cid || ok != tt.ok {
				t.Fatalf("parseCgroupLine(%q) = %q, %q, %v; want %q, %q, %v", tt.line, pod, c, ok, tt.pod, tt.cid, tt.ok)
			}
		})
	}
}

func TestParseCgroups(t *testing.T) {
	v1 := "12:pids:/kubepods/burstable/pod" + uid + "/" + cid + "\n" +
		"11:memory:/kubepods/burstable/pod" + uid + "/" + cid + "\n" +
		"1:name=systemd:/kubepods/burstable/pod" + uid + "/" + cid + "\n" +
		"0::/\n"
	other := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in string
		pod, cid string
		wantErr  bool
	}{
		{name: "ok/v1", in: v1, pod: uid, cid: cid},
		{name: "ok/v2", in: "0::/kubepods.slice/kubepods-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope\n", pod: uid, cid: cid},
		{name: "ok/host", in: "9:name=systemd:/\n4:memory:/process_api/28101ea7\n0::/\n"},
		{name: "ok/empty", in: ""},
		{name: "ok/crlf", in: "0::/kubepods/pod" + uid + "/" + cid + "\r\n", pod: uid, cid: cid},
		{name: "ok/one-hierarchy-at-pod-level", in: "2:cpu:/kubepods/pod" + uid + "\n1:memory:/kubepods/pod" + uid + "/" + cid + "\n", pod: uid, cid: cid},
		{name: "fail/two-pods", in: "2:cpu:/kubepods/pod" + uid + "/" + cid + "\n1:memory:/kubepods/pod" + static + "/" + cid + "\n", wantErr: true},
		{name: "fail/two-containers", in: "2:cpu:/kubepods/pod" + uid + "/" + cid + "\n1:memory:/kubepods/pod" + uid + "/" + other + "\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, c, err := parseCgroups([]byte(tt.in))
			if (err != nil) != tt.wantErr || pod != tt.pod || c != tt.cid {
				t.Fatalf("parseCgroups(%q) = %q, %q, %v; want %q, %q, error %v", tt.in, pod, c, err, tt.pod, tt.cid, tt.wantErr)
			}
		})
	}
}

var (
	dashedUID = regexp.MustCompile(`^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$`)
	hex64     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// FuzzParseCgroupLine checks that any line parses without panic into
// either nothing or a well-formed pod UID and container ID.
func FuzzParseCgroupLine(f *testing.F) {
	for _, s := range []string{
		"12:memory:/kubepods/burstable/pod" + uid + "/" + cid,
		"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSD + ".slice/cri-containerd-" + cid + ".scope",
		"0::/", "", "::", "0::/user.slice/user@1000.service/kubepods/pod" + uid,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		pod, c, ok := parseCgroupLine(line)
		if !ok {
			if pod != "" || c != "" {
				t.Fatalf("parseCgroupLine(%q) = %q, %q, false", line, pod, c)
			}
			return
		}
		if !dashedUID.MatchString(pod) {
			t.Fatalf("parseCgroupLine(%q): pod UID %q", line, pod)
		}
		if c != "" && !hex64.MatchString(c) {
			t.Fatalf("parseCgroupLine(%q): container ID %q", line, c)
		}
		if !strings.Contains(line, "kubepods") {
			t.Fatalf("parseCgroupLine(%q) found a pod outside kubepods", line)
		}
	})
}

// FuzzDecodePodList checks that any kubelet answer decodes without panic
// into an index whose keys are the pods' UIDs.
func FuzzDecodePodList(f *testing.F) {
	f.Add([]byte(`{"kind":"PodList","items":[{"metadata":{"name":"a","namespace":"b","uid":"` + uid + `","labels":{"app":"x"}},"spec":{"serviceAccountName":"s","nodeName":"n"},"status":{"containerStatuses":[{"name":"c","containerID":"containerd://` + cid + `"}]}}]}`))
	f.Add([]byte(`{"items":[null,{},{"metadata":{"uid":""}}]}`))
	f.Add([]byte(`{"items":{}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, err := decodePodList(b)
		if err != nil {
			return
		}
		for k, p := range idx.byUID {
			if p == nil || k == "" || p.Metadata.UID != k {
				t.Fatalf("index entry %q = %+v", k, p)
			}
			p.container(cid)
			p.selectors("c")
		}
	})
}
