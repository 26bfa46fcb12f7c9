// Package unix is the unix workload attestation method: the selectors of a
// process from what the kernel says about it in /proc.
//
// Selectors:
//
//	unix:uid:<real uid>          unix:gid:<real gid>
//	unix:user:<name of the uid>  unix:group:<name of the gid>   (when the name can be looked up)
//	unix:path:<executable path>  unix:sha256:<hex SHA-256 of the executable>
//
// The uid and gid are the real ones, the first field of the "Uid:" and
// "Gid:" lines of /proc/<pid>/status, as SPIRE's unix attestor does: the
// real ID is who started the process, while a setuid program's effective
// ID says which program it is, which the path and hash already say.
// IDs are as seen from the agent's user namespace.
//
// The path is the target of /proc/<pid>/exe, as the process's mount
// namespace sees it (inside a container: the container's path), with
// " (deleted)" appended by the kernel if the file was removed or replaced
// since the process started. The hash is of the file the process runs,
// opened through /proc/<pid>/exe (so a replaced file on disk does not
// change it), and is skipped for executables larger than
// Config.MaxExecutableSize. When the agent may not read /proc/<pid>/exe
// (another user's process, without CAP_SYS_PTRACE), or the process has no
// executable (a kernel thread), the path and hash selectors are omitted; a
// path that cannot be a selector (control characters, invalid UTF-8) is
// omitted too. Omitting selectors never widens what a process matches.
//
// The process is pinned before anything is read and checked again after:
// by the start time and pidfd the agent took when it connected
// (attest.Peer), and by its effective uid and gid, which must be those the
// kernel reported at connect time (SO_PEERCRED). If it exited or its PID
// was reused meanwhile, Attest fails with ErrProcessChanged rather than
// describe another process.
package unix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"

	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/internal/procfs"
)

// Name is the attestation method and the type of its selectors.
const Name = "unix"

// DefaultMaxExecutableSize is the default bound on executables hashed.
const DefaultMaxExecutableSize = 128 << 20

// maxStatusSize bounds /proc/<pid>/status (about 1.5 KiB in practice).
const maxStatusSize = 64 << 10

// Config configures the unix workload attestor. The zero value is valid.
type Config struct {
	// ProcRoot is where procfs is mounted. Default: /proc.
	ProcRoot string
	// MaxExecutableSize bounds the size of executables hashed for
	// unix:sha256; larger ones get no sha256 selector. Zero means
	// DefaultMaxExecutableSize; negative disables hashing.
	MaxExecutableSize int64
	// Log receives debug messages about omitted selectors. Default: none.
	Log *slog.Logger
}

// Attestor is the unix workload attestor.
type Attestor struct {
	root    string
	maxSize int64
	log     *slog.Logger

	mu     sync.Mutex // guards hashes
	hashes map[fileID]string
}

// fileID identifies an executable's content without reading it: a file
// changed in place gets a new size, mtime or ctime.
type fileID struct {
	dev, ino    uint64
	size        int64
	mtime, ctim int64
}

// maxCachedHashes bounds the hash cache; it is emptied when full.
const maxCachedHashes = 1024

var _ attest.WorkloadAttestor = (*Attestor)(nil)

// New returns a unix workload attestor.
func New(cfg Config) *Attestor {
	a := &Attestor{root: cfg.ProcRoot, maxSize: cfg.MaxExecutableSize, log: cfg.Log, hashes: map[fileID]string{}}
	if a.root == "" {
		a.root = procfs.DefaultRoot
	}
	if a.maxSize == 0 {
		a.maxSize = DefaultMaxExecutableSize
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a
}

// Name returns "unix".
func (a *Attestor) Name() string { return Name }

// Attest returns the selectors of the process that connected as peer.
func (a *Attestor) Attest(ctx context.Context, peer attest.Peer) ([]attest.Selector, error) {
	pid := peer.PID
	p, err := procfs.OpenPeer(Name, a.root, peer)
	if err != nil {
		return nil, err
	}
	status, err := p.ReadFile("status", maxStatusSize)
	if err != nil {
		return nil, err
	}
	ids, err := ParseStatus(status)
	if err != nil {
		return nil, attest.NewError(attest.KindUnavailable, Name, fmt.Sprintf("pid %d: status", pid), err)
	}
	if ids.EUID != peer.UID || ids.EGID != peer.GID {
		return nil, attest.NewError(attest.KindProcessChanged, Name, fmt.Sprintf("pid %d runs as uid %d gid %d, the process that connected as uid %d gid %d",
			pid, ids.EUID, ids.EGID, peer.UID, peer.GID), nil)
	}
	uid, gid := strconv.FormatUint(uint64(ids.UID), 10), strconv.FormatUint(uint64(ids.GID), 10)
	sels := []attest.Selector{{Type: Name, Value: "uid:" + uid}, {Type: Name, Value: "gid:" + gid}}
	if u, err := user.LookupId(uid); err == nil && u.Username != "" {
		sels = appendValid(sels, "user:"+u.Username)
	}
	if g, err := user.LookupGroupId(gid); err == nil && g.Name != "" {
		sels = appendValid(sels, "group:"+g.Name)
	}

	exe, err := os.Readlink(p.Path("exe"))
	switch {
	case err != nil:
		// Gone, or no permission, or no executable: only Check can tell
		// the first from the others.
		if cerr := p.Check(); cerr != nil {
			return nil, cerr
		}
		a.log.Debug("unix: no path and sha256 selectors", "pid", pid, "error", err)
	default:
		sels = appendValid(sels, "path:"+exe)
		if err := ctx.Err(); err != nil {
			return nil, attest.NewError(attest.KindUnavailable, Name, "attestation cancelled", err)
		}
		sum, err := a.hash(p)
		switch {
		case err != nil && procfs.Gone(err):
			return nil, p.Err("hash executable", err)
		case errors.Is(err, fs.ErrPermission):
			a.log.Debug("unix: no sha256 selector", "pid", pid, "error", err)
		case err != nil:
			return nil, p.Err("hash executable", err)
		case sum != "":
			sels = append(sels, attest.Selector{Type: Name, Value: "sha256:" + sum})
		}
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return sels, nil
}

// hash returns the hex SHA-256 of the process's executable, or "" if
// hashing is disabled or the executable is larger than the bound. Hashes
// are cached by the identity of the opened file (device, inode, size,
// mtime, ctime), so each binary is read once, not at every call.
func (a *Attestor) hash(p *procfs.Process) (string, error) {
	if a.maxSize < 0 {
		return "", nil
	}
	f, err := os.Open(p.Path("exe"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if fi.Size() > a.maxSize {
		a.log.Debug("unix: executable too large to hash", "pid", p.PID, "size", fi.Size(), "max", a.maxSize)
		return "", nil
	}
	var id fileID
	st, cacheable := fi.Sys().(*syscall.Stat_t)
	if cacheable {
		id = fileID{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctim: st.Ctim.Nano()}
		a.mu.Lock()
		sum, ok := a.hashes[id]
		a.mu.Unlock()
		if ok {
			return sum, nil
		}
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, a.maxSize+1))
	if err != nil {
		return "", err
	}
	if n > a.maxSize || n != fi.Size() { // changed while read
		return "", nil
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if cacheable {
		a.mu.Lock()
		if len(a.hashes) >= maxCachedHashes {
			clear(a.hashes)
		}
		a.hashes[id] = sum
		a.mu.Unlock()
	}
	return sum, nil
}

func appendValid(sels []attest.Selector, value string) []attest.Selector {
	if attest.ValidateSelectorValue(value) != nil {
		return sels
	}
	return append(sels, attest.Selector{Type: Name, Value: value})
}

// IDs are the user and group IDs of a process.
type IDs struct {
	// UID and GID are the real IDs; EUID and EGID the effective ones.
	UID, EUID, GID, EGID uint32
}

// ParseStatus reads the "Uid:" and "Gid:" lines of a /proc/<pid>/status
// file ("Uid:\treal\teffective\tsaved\tfilesystem").
func ParseStatus(status []byte) (IDs, error) {
	var ids IDs
	var haveUID, haveGID bool
	for line := range bytes.Lines(status) {
		key, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var real, eff *uint32
		switch string(key) {
		case "Uid":
			if haveUID {
				return IDs{}, errors.New("two Uid lines")
			}
			real, eff, haveUID = &ids.UID, &ids.EUID, true
		case "Gid":
			if haveGID {
				return IDs{}, errors.New("two Gid lines")
			}
			real, eff, haveGID = &ids.GID, &ids.EGID, true
		default:
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 4 {
			return IDs{}, fmt.Errorf("%s line has %d fields, want 4", key, len(f))
		}
		for i, dst := range []*uint32{real, eff} {
			v, err := strconv.ParseUint(string(f[i]), 10, 32)
			if err != nil {
				return IDs{}, fmt.Errorf("%s line: field %d is not an ID", key, i+1)
			}
			*dst = uint32(v)
		}
	}
	if !haveUID || !haveGID {
		return IDs{}, errors.New("no Uid or Gid line")
	}
	return ids, nil
}
