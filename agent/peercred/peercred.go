// Package peercred identifies the process at the other end of a Unix socket
// with SO_PEERCRED, as gRPC transport credentials: every call on the
// agent's socket knows the caller's pid, uid and gid, which the workload
// attestors turn into selectors.
//
// The process is pinned when the connection is accepted: the kernel's
// pidfd of the peer taken at connect time (SO_PEERPIDFD, Linux 6.5 and
// later) is kept for the life of the connection, and the process's start
// time is read once the handshake sees it alive. A connection whose
// process exited, even if another process now has its PID (or the socket
// was passed to another process), is never attested as that other process:
// the attestors compare what they read with both.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/internal/procfs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthInfo is the caller's process credentials, taken at connect time.
type AuthInfo struct {
	credentials.CommonAuthInfo
	PID      int32
	UID, GID uint32
	// StartTime is the process's start time (clock ticks after boot).
	StartTime uint64
	// Alive reports whether the process that connected still runs (nil
	// error); nil when the kernel has no SO_PEERPIDFD.
	Alive func() error
}

// Peer returns the credentials as workload attestors take them.
func (a AuthInfo) Peer() attest.Peer {
	return attest.Peer{PID: a.PID, UID: a.UID, GID: a.GID, StartTime: a.StartTime, Alive: a.Alive}
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// FromContext returns the credentials of the caller of a gRPC method.
func FromContext(ctx context.Context) (AuthInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return AuthInfo{}, false
	}
	a, ok := p.AuthInfo.(AuthInfo)
	return a, ok
}

type creds struct{}

// New returns server transport credentials that read SO_PEERCRED from each
// accepted Unix connection and refuse any other kind of connection.
func New() credentials.TransportCredentials { return creds{} }

func (creds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("peercred: %T is not a Unix socket connection", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("peercred: %w", err)
	}
	var cred *unix.Ucred
	var credErr, pidfdErr error
	pidfd := -1
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		pidfd, pidfdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	}); err != nil {
		return nil, nil, fmt.Errorf("peercred: %w", err)
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("peercred: SO_PEERCRED: %w", credErr)
	}
	info := AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	switch {
	case pidfdErr == nil:
		pc := &pinnedConn{Conn: c, pidfd: pidfd}
		info.Alive = pc.alive
		c = pc
	case !errors.Is(pidfdErr, unix.ENOPROTOOPT) && !errors.Is(pidfdErr, unix.EINVAL):
		return nil, nil, fmt.Errorf("peercred: SO_PEERPIDFD: %w", pidfdErr)
	}
	// The start time read while the pidfd says the process is alive is the
	// process's own: its PID cannot have been reused yet.
	st, err := procfs.StartTime(procfs.DefaultRoot, cred.Pid)
	if err == nil && info.Alive != nil {
		err = info.Alive()
	}
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("peercred: pid %d exited before its connection was accepted: %w", cred.Pid, err)
	}
	info.StartTime = st
	return c, info, nil
}

// pinnedConn holds the pidfd of the process that opened the connection
// for as long as the connection lasts.
type pinnedConn struct {
	net.Conn
	mu     sync.Mutex // guards pidfd
	pidfd  int        // -1 once closed
	closed bool
}

// alive reports whether the process the pidfd refers to still runs.
func (p *pinnedConn) alive() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("peercred: connection closed")
	}
	err := unix.PidfdSendSignal(p.pidfd, 0, nil, 0)
	if err == nil || errors.Is(err, unix.EPERM) { // EPERM: alive, another user's
		return nil
	}
	return fmt.Errorf("peercred: the process that connected is gone: %w", err)
}

func (p *pinnedConn) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		unix.Close(p.pidfd)
	}
	p.mu.Unlock()
	return p.Conn.Close()
}

func (creds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: server-side credentials only")
}

func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c creds) Clone() credentials.TransportCredentials { return c }

func (creds) OverrideServerName(string) error { return nil }
