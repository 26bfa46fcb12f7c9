package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat:
// 100 on every Linux architecture.
const clockTicks = 100

// maxProcFile bounds what is read of a /proc/<pid> file; the socket
// tables of /proc/net, which grow with the host's sockets, are streamed.
const maxProcFile = 4 << 20

// cpuSample is the CPU time and resident memory of processes, summed.
type cpuSample struct {
	cpu time.Duration
	rss int64
	err error
}

// readCPU reads user + system CPU time and RSS of pids from procRoot.
func readCPU(procRoot string, pids []int) cpuSample {
	var s cpuSample
	for _, pid := range pids {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		b, err := readProcFile(filepath.Join(dir, "stat"))
		if err != nil {
			s.err = err
			continue
		}
		ticks, err := parseStatCPU(b)
		if err != nil {
			s.err = fmt.Errorf("%s/stat: %w", dir, err)
			continue
		}
		s.cpu += time.Duration(ticks) * time.Second / clockTicks
		if b, err = readProcFile(filepath.Join(dir, "status")); err == nil {
			rss, err := parseStatusRSS(b)
			if err != nil {
				s.err = fmt.Errorf("%s/status: %w", dir, err)
			}
			s.rss += rss
		}
	}
	return s
}

func readProcFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxProcFile))
}

// errProcFormat marks /proc content that is not as documented in proc(5).
var errProcFormat = errors.New("bench: unexpected /proc format")

// parseStatCPU returns utime + stime (fields 14 and 15, in clock ticks)
// of a /proc/<pid>/stat line. The command name (field 2) is in
// parentheses and may hold spaces and parentheses: fields are counted
// after its last ')'.
func parseStatCPU(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || bytes.IndexByte(b, '(') > i {
		return 0, fmt.Errorf("%w: no command name in stat", errProcFormat)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%w: %d fields after the command name in stat, want at least 13", errProcFormat, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%w: stat CPU times: %v", errProcFormat, err)
	}
	if utime > 1<<62 || stime > 1<<62 {
		return 0, fmt.Errorf("%w: stat CPU times out of range", errProcFormat)
	}
	return utime + stime, nil
}

// parseStatusRSS returns VmRSS of a /proc/<pid>/status file, in bytes
// (0 for a process with none, such as a zombie).
func parseStatusRSS(b []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%w: VmRSS %q", errProcFormat, v)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return 0, fmt.Errorf("%w: VmRSS %q", errProcFormat, v)
		}
		return kb << 10, nil
	}
	return 0, sc.Err()
}

// tcpListenState is TCP_LISTEN in /proc/net/tcp's st column.
const tcpListenState = "0A"

// parseNetTCP returns the inodes of the listening sockets of a
// /proc/net/tcp or tcp6 table, by local port.
func parseNetTCP(r io.Reader) (map[int][]uint64, error) {
	out := map[int][]uint64{}
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			return nil, fmt.Errorf("%w: a net/tcp line of %d fields", errProcFormat, len(f))
		}
		if f[3] != tcpListenState {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			return nil, fmt.Errorf("%w: net/tcp local address %q", errProcFormat, f[1])
		}
		port, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err != nil {
			return nil, fmt.Errorf("%w: net/tcp local port %q", errProcFormat, f[1])
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: net/tcp inode %q", errProcFormat, f[9])
		}
		out[int(port)] = append(out[int(port)], inode)
	}
	return out, sc.Err()
}

// parseNetUnix returns the inodes of the Unix sockets of /proc/net/unix
// bound to a path, by path.
func parseNetUnix(r io.Reader) (map[string][]uint64, error) {
	out := map[string][]uint64{}
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 7 {
			return nil, fmt.Errorf("%w: a net/unix line of %d fields", errProcFormat, len(f))
		}
		if len(f) < 8 {
			continue // unbound
		}
		inode, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: net/unix inode %q", errProcFormat, f[6])
		}
		out[f[7]] = append(out[f[7]], inode)
	}
	return out, sc.Err()
}

// LocalPIDs finds the processes of this host that listen on the TCP port
// of one of addrs whose host is this host's (a loopback address, or one
// of its interfaces'), or on one of the Unix socket paths: the local
// servers of a run, whose CPU and memory it reads. Processes of other
// users are not found (their /proc/<pid>/fd is not readable).
func LocalPIDs(procRoot string, addrs, socketPaths []string) ([]int, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	local := localIPs()
	want := map[uint64]bool{}
	var ports []int
	for _, a := range addrs {
		host, p, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("bench: server address %q: %w", a, err)
		}
		port, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("bench: server address %q: port %q", a, p)
		}
		if ips, err := net.LookupIP(host); err == nil && slices.ContainsFunc(ips, func(ip net.IP) bool { return ip.IsLoopback() || local[ip.String()] }) {
			ports = append(ports, port)
		}
	}
	if len(ports) > 0 {
		for _, table := range []string{"net/tcp", "net/tcp6"} {
			f, err := os.Open(filepath.Join(procRoot, table))
			if err != nil {
				continue // no IPv6
			}
			byPort, err := parseNetTCP(f)
			f.Close()
			if err != nil {
				return nil, err
			}
			for _, p := range ports {
				for _, ino := range byPort[p] {
					want[ino] = true
				}
			}
		}
	}
	if len(socketPaths) > 0 {
		if f, err := os.Open(filepath.Join(procRoot, "net/unix")); err == nil {
			byPath, err := parseNetUnix(f)
			f.Close()
			if err != nil {
				return nil, err
			}
			for _, p := range socketPaths {
				for _, ino := range byPath[p] {
					want[ino] = true
				}
			}
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join(procRoot, p.Name(), "fd"))
		if err != nil {
			continue // another user's, or gone
		}
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(procRoot, p.Name(), "fd", fd.Name()))
			if err != nil {
				continue
			}
			s, ok := strings.CutPrefix(l, "socket:[")
			if !ok {
				continue
			}
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil && want[ino] {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// localIPs are this host's interface addresses.
func localIPs() map[string]bool {
	out := map[string]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out[n.IP.String()] = true
		}
	}
	return out
}
