// Package pgtest runs a throw-away PostgreSQL for tests: initdb and
// postgres in a temporary directory, listening on a random 127.0.0.1 port,
// as an unprivileged user when the tests run as root (PostgreSQL refuses to
// run as root). It is imported by tests only.
//
// Without PostgreSQL installed the test is skipped, or fails when CI is set
// (`make test` installs it: apt-get install postgresql).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/meshca/meshca/internal/testtool"
	"golang.org/x/sys/unix"
)

// SuperPassword is the password of the superuser "postgres" in every
// server this package starts (TCP connections authenticate with
// scram-sha-256).
const SuperPassword = "pgtest-super"

// Server is one running (or stopped) PostgreSQL cluster.
type Server struct {
	bin  string
	dir  string
	port int
	cred *syscall.Credential
	uid  int
	gid  int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logf *os.File
}

// BinDir finds the directory of initdb and postgres: the newest
// /usr/lib/postgresql/<version>/bin, else the directory of initdb on PATH.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	p, err := exec.LookPath("initdb")
	if err != nil {
		return "", errors.New("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): apt-get install postgresql")
	}
	return filepath.Dir(p), nil
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// need skips (or fails, on CI) a test when PostgreSQL is missing.
func need(t testing.TB) string {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("PostgreSQL is required on CI (make test installs it): %v", err)
		}
		t.Skipf("%v", err)
	}
	return bin
}

// Start initialises and starts a new PostgreSQL cluster for the test and
// stops it (and removes its files) when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New(need(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Destroy)
	return s
}

// New initialises and starts a cluster with the binaries in bin. The
// caller must Destroy it.
func New(bin string) (_ *Server, err error) {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, uid: -1, gid: -1}
	defer func() {
		if err != nil {
			s.Destroy()
		}
	}()
	if os.Geteuid() == 0 {
		u, err := unprivileged()
		if err != nil {
			return nil, err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.uid, s.gid = uid, gid
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte(SuperPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if s.uid >= 0 {
		if err := os.Chown(pw, s.uid, s.gid); err != nil {
			return nil, err
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", s.dataDir(), "-U", "postgres", "--pwfile", pw,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-locale")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	// Listen on 127.0.0.1 only; TCP connections need a password.
	hba := "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(s.dataDir(), "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, err
	}
	if s.uid >= 0 {
		if err := os.Chown(filepath.Join(s.dataDir(), "pg_hba.conf"), s.uid, s.gid); err != nil {
			return nil, err
		}
	}
	if s.port, err = freePort(); err != nil {
		return nil, err
	}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

func unprivileged() (*user.User, error) {
	for _, name := range []string{"postgres", "nobody"} {
		if u, err := user.Lookup(name); err == nil {
			return u, nil
		}
	}
	return nil, errors.New("running as root and neither user postgres nor nobody exists to run PostgreSQL as")
}

func freePort() (int, error) { return testtool.FreePortNumber() }

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// Port is the TCP port the server listens on (127.0.0.1).
func (s *Server) Port() int { return s.port }

// Addr is 127.0.0.1:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// DSN is a URL for database db as role user with password.
func (s *Server) DSN(user, password, db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", user, password, s.Addr(), db)
}

// SuperDSN is a URL for database db as the superuser.
func (s *Server) SuperDSN(db string) string { return s.DSN("postgres", SuperPassword, db) }

// Restart starts the server (after Stop or Kill) and waits until it
// accepts connections.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("pgtest: already running")
	}
	var lastErr error
	// A killed server's backends may hold its shared memory for a moment:
	// postgres refuses to start until they are gone.
	for attempt := 0; attempt < 50; attempt++ {
		if err := s.startLocked(); err != nil {
			lastErr = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err := s.waitReady(15 * time.Second); err != nil {
			lastErr = err
			s.killLocked(syscall.SIGKILL)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return nil
	}
	return fmt.Errorf("pgtest: postgres did not start: %v\n%s", lastErr, s.logTail())
}

func (s *Server) startLocked() error {
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.dataDir(), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.dir,
		// fsync=off: a killed postgres loses nothing the OS has (only a power
		// loss would); synchronous_commit stays on, so a commit is in the WAL
		// before it returns and survives Kill.
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	if err := startOnCPUs(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // owned by s: ends with the process
	s.cmd, s.done, s.logf = cmd, done, logf
	return nil
}

// CPUsEnv names the CPUs PostgreSQL runs on, when set: "1", "2-3" (as
// taskset -c). A benchmark run under taskset -c 0 with MESHCA_PGTEST_CPUS=1
// keeps PostgreSQL off the cores of the server it measures, as a database
// host of its own would.
const CPUsEnv = "MESHCA_PGTEST_CPUS"

// startOnCPUs starts cmd, on the CPUs of CPUsEnv if set: the child
// inherits the affinity of the thread that forks it, so postgres and every
// process it forks run there from their first instruction.
func startOnCPUs(cmd *exec.Cmd) error {
	spec := os.Getenv(CPUsEnv)
	if spec == "" {
		return cmd.Start()
	}
	var set unix.CPUSet
	for _, part := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= 1024 {
			return fmt.Errorf("%s=%q: want CPU numbers such as 1 or 2-3,5", CPUsEnv, spec)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("%s: %w", CPUsEnv, err)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("%s=%q: %w", CPUsEnv, spec, err)
	}
	err := cmd.Start()
	if unix.SchedSetaffinity(0, &old) == nil {
		runtime.UnlockOSThread() // else the thread stays locked and ends with this goroutine
	}
	return err
}

func (s *Server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-s.done:
			return errors.New("postgres exited")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, s.SuperDSN("postgres"))
		if err == nil {
			c.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Kill stops the server abruptly: SIGKILL to postgres and every backend
// (its process group), as a crash or a power loss would. Transactions in
// flight are lost; committed ones survive (recovered on Restart).
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked(syscall.SIGKILL)
}

// Stop shuts the server down cleanly (SIGINT: fast shutdown).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked(syscall.SIGINT)
}

func (s *Server) killLocked(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	if sig == syscall.SIGKILL {
		syscall.Kill(-s.cmd.Process.Pid, sig) // the process group: backends too
	} else {
		s.cmd.Process.Signal(sig)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.logf.Close()
	s.cmd = nil
}

// Destroy stops the server and removes its files.
func (s *Server) Destroy() {
	s.Stop()
	os.RemoveAll(s.dir)
}

// Exec runs SQL statements as the superuser in database db.
func (s *Server) Exec(db string, sqls ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.SuperDSN(db))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	for _, q := range sqls {
		if _, err := c.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

var dbSeq struct {
	sync.Mutex
	n int
}

// Database creates a new database owned by a new role with a password and
// returns its DSN: each test gets its own, on a shared or its own server.
func (s *Server) Database(t testing.TB) string {
	t.Helper()
	dbSeq.Lock()
	dbSeq.n++
	n := dbSeq.n
	dbSeq.Unlock()
	name := fmt.Sprintf("meshca_%d", n)
	pw := "pw-" + name
	if err := s.Exec("postgres", fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", name, pw),
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", name, name)); err != nil {
		t.Fatal(err)
	}
	return s.DSN(name, pw, name)
}

var shared struct {
	sync.Mutex
	s *Server
}

// Shared returns the package's shared server, started on first use; Main
// stops it when the package's tests end. Tests that stop or kill the
// server use Start instead.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := need(t)
	shared.Lock()
	defer shared.Unlock()
	if shared.s == nil {
		s, err := New(bin)
		if err != nil {
			t.Fatal(err)
		}
		shared.s = s
	}
	return shared.s
}

// Main runs the package's tests (from TestMain) and then destroys the
// shared server, if one was started.
func Main(m *testing.M) int {
	code := m.Run()
	shared.Lock()
	if shared.s != nil {
		shared.s.Destroy()
		shared.s = nil
	}
	shared.Unlock()
	return code
}

// EnableTLS restarts the server with TLS on, presenting the PEM
// certificate chain and key given; connections may then use
// sslmode=verify-full against the certificate's CA.
func (s *Server) EnableTLS(certPEM, keyPEM []byte) error {
	s.Stop()
	for name, data := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
		p := filepath.Join(s.dataDir(), name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return err
		}
		if s.uid >= 0 {
			if err := os.Chown(p, s.uid, s.gid); err != nil {
				return err
			}
		}
	}
	conf, err := os.OpenFile(filepath.Join(s.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = conf.WriteString("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
	if err := errors.Join(err, conf.Close()); err != nil {
		return err
	}
	return s.Restart()
}
