package agent

import (
	"bytes"
	"crypto/x509"
	"math/big"
	"math/rand/v2"
	"time"

	"github.com/meshca/meshca/proto/nodepb"
)

// Re-issuance of compromised SVIDs (issue 13). An SVID whose issuer an
// operator tainted, or that its issuer's CRL lists, is renewed at once,
// at a random moment within Config.ReissueJitter so that a fleet does not
// come all at once (the servers' admission limits then pace the rest). The
// agent's own SVID is treated the same way.

// DefaultReissueJitter spreads the re-issue of compromised SVIDs.
const DefaultReissueJitter = 5 * time.Second

// crlState is what the store keeps of one CA's CRL resource.
type crlState struct {
	tainted bool
	issuer  []byte
	revoked map[string]bool // serials (decimal) the CRL lists
}

func newCRLState(c *nodepb.CRL) *crlState {
	st := &crlState{tainted: c.Tainted, issuer: c.Certificate, revoked: map[string]bool{}}
	// Parsed structurally: SM2 CRLs parse too; the signature is checked by
	// the proxies that rely on it.
	if rl, err := x509.ParseRevocationList(c.Der); err == nil {
		for _, e := range rl.RevokedCertificateEntries {
			st.revoked[e.SerialNumber.String()] = true
		}
	}
	return st
}

// compromisedLocked reports whether a chain (leaf first) with leaf serial
// serial is issued by a tainted CA or listed in its issuer's CRL.
func (s *store) compromisedLocked(chain [][]byte, serial *big.Int) bool {
	if len(chain) < 2 || serial == nil {
		return false
	}
	for _, st := range s.crlStates {
		if bytes.Equal(st.issuer, chain[1]) {
			return st.tainted || st.revoked[serial.String()]
		}
	}
	return false
}

// reissueAt is a moment within the jitter from now.
func (s *store) reissueAt() time.Time {
	return s.now().Add(time.Duration(rand.Int64N(int64(s.jitter) + 1)))
}

// markCompromisedLocked moves the renewal of every compromised SVID to
// within the jitter from now, once per SVID.
func (s *store) markCompromisedLocked() {
	if s.now == nil {
		return
	}
	for _, v := range s.svids {
		if !v.replacing && s.compromisedLocked(v.chain, v.serial) {
			v.replacing = true
			if at := s.reissueAt(); at.Before(v.renewAt) {
				v.renewAt = at
			}
		}
	}
}

// compromised reports whether the agent's own SVID chain is compromised.
func (s *store) compromised(chain [][]byte, serial *big.Int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compromisedLocked(chain, serial)
}

// checkOwnSVID moves the renewal of the agent's own SVID forward when it is
// compromised.
func (a *Agent) checkOwnSVID() {
	chain, serial, replacing := a.id.current()
	if replacing || chain == nil || !a.store.compromised(chain, serial) {
		return
	}
	a.id.renewBy(a.store.reissueAt())
}
