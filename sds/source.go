package sds

import (
	"context"
	"errors"
	"fmt"
	"sync"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Source is one caller's view of its secrets, made by [Config.Secrets] for
// each stream or fetch. Its methods are called from the stream's handler
// and from the server's push workers, never concurrently for one stream,
// but concurrently across streams (a Source shared by several streams must
// be safe for that). They must not block: they read the agent's in-memory
// state. The ctx is the stream's (peer credentials, cancellation).
type Source interface {
	// Resolve answers for one requested resource name: [Grant] with the
	// resource, [Refuse] when the caller may not have it, or [Wait] while
	// the caller may have it but the agent has not got it yet. Every
	// answer names the topics it depends on (see [Server.Notify]): the
	// server resolves the name again when one of them is notified. An
	// error ends the stream (a gRPC status error as is, any other as
	// Unavailable).
	Resolve(ctx context.Context, name string) (Result, error)
	// Names lists every resource name the caller may have now, for a
	// wildcard subscription (a SotW stream whose first request names
	// nothing, a delta stream subscribed to "*", or a fetch of no names),
	// with the topics whose notification may change that list.
	Names(ctx context.Context) (names []string, topics []string, err error)
}

// Status is the answer of a Source for one name.
type Status uint8

const (
	// Granted: the caller gets the resource.
	Granted Status = iota + 1
	// Refused: the caller may not have this name. It gets no resource
	// (see the package doc) and the refusal is audited.
	Refused
	// Pending: the caller may have the name but its secret is not ready
	// (the SVID is being issued). Nothing is sent for it until it is
	// granted or refused; a stream whose every name is pending gets no
	// response yet, as an Envoy starting before its SVID expects.
	Pending
)

func (s Status) String() string {
	switch s {
	case Granted:
		return "granted"
	case Refused:
		return "refused"
	case Pending:
		return "pending"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Result is a Source's answer for one name; build it with [Grant],
// [Refuse] or [Wait].
type Result struct {
	Status Status
	// Resource is the granted secret; nil unless Status is Granted.
	Resource *Resource
	// Reason says why a name is refused (audited and logged, never sent).
	Reason string
	// Topics are the change topics this answer depends on.
	Topics []string
}

// Grant is the Result granting r.
func Grant(r *Resource, topics ...string) Result {
	return Result{Status: Granted, Resource: r, Topics: topics}
}

// Refuse is the Result refusing a name for the given reason.
func Refuse(reason string, topics ...string) Result {
	return Result{Status: Refused, Reason: reason, Topics: topics}
}

// Wait is the Result for a name the caller may have but whose secret is
// not ready yet; notify one of the topics when it is.
func Wait(topics ...string) Result {
	return Result{Status: Pending, Topics: topics}
}

// Resource is an immutable secret with its version, as a Source serves
// it. Build one per content (e.g. per SVID rotation, per bundle or CRL
// change) and share it between every caller that has it: the server
// marshals it once per requested name, not once per stream.
type Resource struct {
	secret  *tlsv3.Secret
	version string

	mu  sync.Mutex
	any map[string]*anypb.Any // requested name → marshaled secret of that name
}

// maxMemoNames bounds the per-resource cache of marshaled names.
const maxMemoNames = 8

// NewResource wraps a secret of any type (tls_certificate,
// validation_context, generic_secret, session_ticket_keys) with its
// version, which must change if and only if its content changes. The
// secret must not be modified afterwards. Its Name is replaced, when
// served, by the name the caller asked for: Envoy ignores a secret whose
// name is not the requested one.
func NewResource(secret *tlsv3.Secret, version string) (*Resource, error) {
	if secret == nil || secret.GetType() == nil {
		return nil, errors.New("sds: resource: secret without content")
	}
	if version == "" {
		return nil, errors.New("sds: resource: empty version")
	}
	return &Resource{secret: secret, version: version}, nil
}

// Version is the resource's version.
func (r *Resource) Version() string { return r.version }

// Secret is the secret as given to NewResource; it must not be modified.
func (r *Resource) Secret() *tlsv3.Secret { return r.secret }

// marshal returns the secret as an Any, named name. The result is shared:
// callers must not modify it.
func (r *Resource) marshal(name string) (*anypb.Any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a, ok := r.any[name]; ok {
		return a, nil
	}
	// A shallow copy shares the (read-only) content with r.secret.
	a, err := anypb.New(&tlsv3.Secret{Name: name, Type: r.secret.Type})
	if err != nil {
		return nil, fmt.Errorf("sds: marshal secret %q: %w", name, err)
	}
	if r.any == nil || len(r.any) >= maxMemoNames {
		r.any = make(map[string]*anypb.Any, 1)
	}
	r.any[name] = a
	return a, nil
}
