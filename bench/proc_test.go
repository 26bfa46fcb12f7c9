package bench

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const netTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
`

const netTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5151 1 0000000000000000 100 0 0 10 0
`

const netUnix = `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 777 /run/meshca/admin.sock
0000000000000000: 00000003 00000000 00000000 0001 03 778
`

func TestParseProcFiles(t *testing.T) {
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseStatCPU(self); err != nil {
		t.Errorf("parseStatCPU(/proc/self/stat): %v", err)
	}
	fields := "S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 100 0 0"
	for _, tc := range []struct {
		name, in string
		want     uint64
		wantErr  bool
	}{
		{"ok/plain", "42 (meshca) " + fields, 300, false},
		{"ok/comm-with-parens", "42 (a) (b c) " + fields, 300, false},
		{"fail/empty", "", 0, true},
		{"fail/short", "42 (x) S 1 2", 0, true},
		{"fail/not-a-number", "42 (x) S 1 1 1 0 -1 0 0 0 0 0 x 50", 0, true},
		{"fail/close-before-open", ") 42 (x " + fields, 0, true},
	} {
		got, err := parseStatCPU([]byte(tc.in))
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%s: parseStatCPU(%q) = %d, %v; want %d, error %v", tc.name, tc.in, got, err, tc.want, tc.wantErr)
		}
	}

	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if rss, err := parseStatusRSS(status); err != nil || rss <= 0 {
		t.Errorf("parseStatusRSS(/proc/self/status) = %d, %v; want a positive RSS", rss, err)
	}
	if rss, err := parseStatusRSS([]byte("Name:\tx\nVmRSS:\t  1024 kB\n")); err != nil || rss != 1<<20 {
		t.Errorf("parseStatusRSS(1024 kB) = %d, %v; want 1 MiB", rss, err)
	}
	if _, err := parseStatusRSS([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Error("parseStatusRSS accepted a unit other than kB")
	}

	byPort, err := parseNetTCP(strings.NewReader(netTCP))
	if err != nil || !slices.Equal(byPort[8080], []uint64{4242}) || len(byPort) != 1 {
		t.Errorf("parseNetTCP = %v, %v; want port 8080 listening as inode 4242 only", byPort, err)
	}
	if byPort, err := parseNetTCP(strings.NewReader(netTCP6)); err != nil || !slices.Equal(byPort[8443], []uint64{5151}) {
		t.Errorf("parseNetTCP(tcp6) = %v, %v; want port 8443 as inode 5151", byPort, err)
	}
	if _, err := parseNetTCP(strings.NewReader("header\n0: bad\n")); err == nil {
		t.Error("parseNetTCP accepted a short line")
	}
	byPath, err := parseNetUnix(strings.NewReader(netUnix))
	if err != nil || !slices.Equal(byPath["/run/meshca/admin.sock"], []uint64{777}) || len(byPath) != 1 {
		t.Errorf("parseNetUnix = %v, %v; want the admin socket as inode 777 only", byPath, err)
	}
}

// The process listening on a loopback port or a Unix socket path is found;
// an address nobody listens on finds none.
func TestLocalPIDs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir, err := os.MkdirTemp("", "pids")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "a.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	for _, tc := range []struct {
		name           string
		addrs, sockets []string
		want           []int
	}{
		{"tcp", []string{ln.Addr().String()}, nil, []int{os.Getpid()}},
		{"localhost", []string{strings.Replace(ln.Addr().String(), "127.0.0.1", "localhost", 1)}, nil, []int{os.Getpid()}},
		{"unix", nil, []string{sock}, []int{os.Getpid()}},
		{"none", nil, []string{filepath.Join(dir, "nobody.sock")}, nil},
	} {
		got, err := LocalPIDs("", tc.addrs, tc.sockets)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: LocalPIDs(%v, %v) = %v, %v; want %v", tc.name, tc.addrs, tc.sockets, got, err, tc.want)
		}
	}
	if _, err := LocalPIDs("", []string{"no-port"}, nil); err == nil {
		t.Error("LocalPIDs accepted an address without a port")
	}
}

// The /proc parsers take any bytes without panicking, and what they
// return is sane.
func FuzzProcFiles(f *testing.F) {
	for _, s := range []string{netTCP, netTCP6, netUnix, "42 (x) S 1 1 1 0 -1 0 0 0 0 0 250 50", "VmRSS:\t 10 kB\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if ticks, err := parseStatCPU(b); err == nil && ticks > 1<<63 {
			t.Errorf("parseStatCPU = %d", ticks)
		}
		if rss, err := parseStatusRSS(b); err == nil && rss < 0 {
			t.Errorf("parseStatusRSS = %d", rss)
		}
		if m, err := parseNetTCP(bytes.NewReader(b)); err == nil {
			for p := range m {
				if p < 0 || p > 65535 {
					t.Errorf("parseNetTCP port %d", p)
				}
			}
		}
		parseNetUnix(bytes.NewReader(b))
	})
}
