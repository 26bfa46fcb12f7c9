package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/jonboulle/clockwork"
)

// WatchConfig says what a [Watcher] watches and what to do with it.
type WatchConfig struct {
	// Name is the one secret the stream subscribes to. Like an Envoy
	// without ADS, a proxy opens one stream per secret, so that a secret
	// the agent does not have yet (an OPA bundle not pushed) does not hold
	// back the others.
	Name string
	// Apply is called with each secret the server sends, in order, from
	// the watcher's goroutine. A nil error ACKs the response; an error
	// NACKs it (error_detail carries the message, version_info stays the
	// last accepted one) and the caller keeps what it had. A response
	// without the secret (the agent refused it) is NACKed without calling
	// Apply, as Envoy does ("Missing SDS resources").
	Apply func(ctx context.Context, version string, sec *tlsv3.Secret) error
	// OnState, when set, is called when the stream connects, fails or is
	// refused, with a short reason (for logs and readiness). It must not
	// block.
	OnState func(connected bool, reason string)
	// Clock times the reconnect backoff. Default: the real clock.
	Clock clockwork.Clock
	// MinBackoff and MaxBackoff bound the wait before reconnecting after
	// the stream fails (doubling from Min to Max). Defaults 100 ms, 5 s.
	MinBackoff, MaxBackoff time.Duration
	// Log receives NACKs and stream failures. Nil discards.
	Log *slog.Logger
}

// Watcher keeps one long-lived SDS state-of-the-world stream open and
// hands every response to WatchConfig.Apply, acknowledging it the way
// Envoy does (ACK: the response's version and nonce; NACK: the previous
// version, the response's nonce and error_detail). When the stream fails
// (the agent restarts) it reconnects with backoff and subscribes again,
// sending the last accepted version; meanwhile the caller keeps serving
// what it last applied.
type Watcher struct {
	c   *Client
	cfg WatchConfig
}

// ErrMissingSecret is the NACK reason of a response that does not carry
// the subscribed secret.
var ErrMissingSecret = errors.New("sdsclient: the response does not carry the subscribed secret (refused by the agent)")

// Watch makes a watcher on the client's connection.
func (c *Client) Watch(cfg WatchConfig) (*Watcher, error) {
	if cfg.Name == "" || cfg.Apply == nil {
		return nil, errors.New("sdsclient: a watch needs a name and an Apply function")
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Second, cfg.MinBackoff)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.OnState == nil {
		cfg.OnState = func(bool, string) {}
	}
	return &Watcher{c: c, cfg: cfg}, nil
}

// Run watches until ctx is done, then returns nil. Stream failures are
// retried forever; they are reported through OnState and the log.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := w.cfg.MinBackoff
	accepted := ""
	for {
		got, err := w.stream(ctx, &accepted)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			backoff = w.cfg.MinBackoff
		}
		w.cfg.OnState(false, err.Error())
		w.cfg.Log.Warn("SDS stream failed; reconnecting", "name", w.cfg.Name, "error", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-w.cfg.Clock.After(backoff):
		}
		backoff = min(2*backoff, w.cfg.MaxBackoff)
	}
}

// stream runs one stream; got reports whether it received a response.
func (w *Watcher) stream(ctx context.Context, accepted *string) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := w.c.sds.StreamSecrets(ctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	names := []string{w.cfg.Name}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: w.c.Node, ResourceNames: names, TypeUrl: SecretTypeURL, VersionInfo: *accepted}); err != nil {
		return false, fmt.Errorf("send request: %w", err)
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return got, fmt.Errorf("receive: %w", err)
		}
		if !got {
			w.cfg.OnState(true, "")
		}
		got = true
		if err := w.apply(ctx, resp); err != nil {
			w.cfg.Log.Warn("SDS NACK", "name", w.cfg.Name, "version", resp.GetVersionInfo(), "error", err)
			if err := s.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: SecretTypeURL, VersionInfo: *accepted,
				ResponseNonce: resp.GetNonce(), ErrorDetail: statusProto(err)}); err != nil {
				return got, fmt.Errorf("send NACK: %w", err)
			}
			continue
		}
		*accepted = resp.GetVersionInfo()
		if err := s.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: SecretTypeURL, VersionInfo: *accepted,
			ResponseNonce: resp.GetNonce()}); err != nil {
			return got, fmt.Errorf("send ACK: %w", err)
		}
	}
}

func (w *Watcher) apply(ctx context.Context, resp *discoveryv3.DiscoveryResponse) error {
	if t := resp.GetTypeUrl(); t != "" && t != SecretTypeURL {
		return fmt.Errorf("sdsclient: response of type %q, want %s", t, SecretTypeURL)
	}
	var sec *tlsv3.Secret
	for i, a := range resp.GetResources() {
		s, err := unmarshal(a)
		if err != nil {
			return fmt.Errorf("sdsclient: resource %d: %w", i, err)
		}
		if s.GetName() == w.cfg.Name {
			sec = s
		}
	}
	if sec == nil {
		return ErrMissingSecret
	}
	return w.cfg.Apply(ctx, resp.GetVersionInfo(), sec)
}
