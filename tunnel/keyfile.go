package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/meshca/meshca/audit"
)

// ParseKeyFile reads the OPA bundle verification key as `meshca bundle
// show --opa-key` prints it ("# kid: <kid>" and "# algorithm: ES256"
// comment lines, then the PEM public key; the --out file is the PEM
// alone). It returns the PEM block and the key ID ("" if the file names
// none).
func ParseKeyFile(b []byte) (pemBytes []byte, kid string, err error) {
	if len(b) > 64<<10 {
		return nil, "", fmt.Errorf("tunnel: OPA key file: %d bytes, more than a key", len(b))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "# kid:"); ok {
			kid = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "# algorithm:"); ok {
			if alg := strings.TrimSpace(v); alg != "ES256" {
				return nil, "", fmt.Errorf("tunnel: OPA key file: algorithm %q, want ES256", alg)
			}
		}
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, "", errors.New("tunnel: OPA key file: no PEM PUBLIC KEY block (use the output of meshca bundle show --opa-key)")
	}
	return pem.EncodeToMemory(blk), kid, nil
}

// LogAudit is an audit.Recorder for a tunnel run without an audit
// directory: each event is a log line with audit=true and a sequence
// number of the process (denials at Warn). It keeps nothing.
type LogAudit struct {
	Log *slog.Logger

	mu  sync.Mutex
	seq uint64
}

// Record logs e.
func (l *LogAudit) Record(e audit.Event) uint64 {
	l.mu.Lock()
	l.seq++
	seq := l.seq
	l.mu.Unlock()
	lvl := slog.LevelInfo
	if e.Decision == audit.Deny {
		lvl = slog.LevelWarn
	}
	attrs := []any{"audit", true, "seq", seq, "decision", string(e.Decision), "actor", e.Actor, "action", e.Action, "subject", e.Subject}
	if e.Reason != "" {
		attrs = append(attrs, "reason", e.Reason)
	}
	keys := make([]string, 0, len(e.Details))
	for k := range e.Details {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		attrs = append(attrs, k, e.Details[k])
	}
	l.Log.Log(context.Background(), lvl, "audit", attrs...)
	return seq
}
