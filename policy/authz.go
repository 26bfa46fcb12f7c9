package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/rego"
)

// DefaultAuthzDecision is OPA-Envoy's default decision path.
const DefaultAuthzDecision = "envoy/authz/allow"

// Authz is an authorization bundle compiled for one decision, as OPA-Envoy
// evaluates it for Envoy's ext_authz; safe for concurrent use.
type Authz struct {
	Revision uint64
	pq       rego.PreparedEvalQuery
}

// CompileAuthz reads a bundle (its signature is not checked here: the
// caller got it over an authenticated channel) and prepares the decision
// (a slash-separated path under data, e.g. envoy/authz/allow).
func CompileAuthz(ctx context.Context, revision uint64, tarball []byte, decision string) (*Authz, error) {
	if decision == "" {
		decision = DefaultAuthzDecision
	}
	ref, err := ast.ParseRef("data." + strings.ReplaceAll(strings.Trim(decision, "/"), "/", "."))
	if err != nil {
		return nil, invalid("decision %q: %v", decision, err)
	}
	b, err := bundle.NewReader(bytes.NewReader(tarball)).WithSkipBundleVerification(true).WithRegoVersion(ast.RegoV1).Read()
	if err != nil {
		return nil, fmt.Errorf("policy: read the bundle: %w", err)
	}
	pq, err := rego.New(rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(ref)))), rego.ParsedBundle("authz", &b),
		rego.StrictBuiltinErrors(true)).PrepareForEval(ctx)
	if err != nil {
		return nil, &InvalidError{Problems: astProblems(err)}
	}
	return &Authz{Revision: revision, pq: pq}, nil
}

// AuthzResult is a decision in OPA-Envoy's result shapes: a boolean, or an
// object with allowed, headers, response_headers_to_add,
// request_headers_to_remove, http_status and body.
type AuthzResult struct {
	Allowed                bool
	Headers                map[string]string
	ResponseHeadersToAdd   map[string]string
	RequestHeadersToRemove []string
	HTTPStatus             int
	Body                   string
}

// Decide evaluates the decision on an input (see EnvoyInput). An
// undefined decision denies; an evaluation error is an *EvalError.
func (z *Authz) Decide(ctx context.Context, input ast.Value) (AuthzResult, error) {
	vc := getFlatCache()
	defer vc.release()
	rs, err := z.pq.Eval(ctx, rego.EvalParsedInput(input), rego.EvalMetrics(noMetrics), rego.EvalVirtualCache(vc))
	if err != nil {
		if ctx.Err() != nil {
			return AuthzResult{}, ctx.Err()
		}
		return AuthzResult{}, &EvalError{Err: err}
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return AuthzResult{}, nil // undefined: deny
	}
	switch v := rs[0].Expressions[0].Value.(type) {
	case bool:
		return AuthzResult{Allowed: v}, nil
	case map[string]any:
		return authzObject(v)
	default:
		return AuthzResult{}, &EvalError{Err: fmt.Errorf("the decision is %T, not a boolean or an object", v)}
	}
}

func authzObject(v map[string]any) (AuthzResult, error) {
	var r AuthzResult
	bad := func(f string) (AuthzResult, error) {
		return AuthzResult{}, &EvalError{Err: fmt.Errorf("the decision's %s has the wrong type (%T)", f, v[f])}
	}
	var ok bool
	if x, has := v["allowed"]; has {
		if r.Allowed, ok = x.(bool); !ok {
			return bad("allowed")
		}
	}
	headers := func(f string) (map[string]string, bool) {
		x, has := v[f]
		if !has {
			return nil, true
		}
		m, ok := x.(map[string]any)
		if !ok {
			return nil, false
		}
		out := make(map[string]string, len(m))
		for k, val := range m {
			s, ok := val.(string)
			if !ok {
				return nil, false
			}
			out[k] = s
		}
		return out, true
	}
	if r.Headers, ok = headers("headers"); !ok {
		return bad("headers")
	}
	if r.ResponseHeadersToAdd, ok = headers("response_headers_to_add"); !ok {
		return bad("response_headers_to_add")
	}
	if x, has := v["request_headers_to_remove"]; has {
		arr, ok := x.([]any)
		if !ok {
			return bad("request_headers_to_remove")
		}
		for _, h := range arr {
			s, ok := h.(string)
			if !ok {
				return bad("request_headers_to_remove")
			}
			r.RequestHeadersToRemove = append(r.RequestHeadersToRemove, s)
		}
	}
	if x, has := v["http_status"]; has {
		n, ok := x.(json.Number)
		code, err := n.Int64()
		if !ok || err != nil || code < 100 || code > 599 {
			return bad("http_status")
		}
		r.HTTPStatus = int(code)
	}
	if x, has := v["body"]; has {
		if r.Body, ok = x.(string); !ok {
			return bad("body")
		}
	}
	return r, nil
}

// EnvoyInput builds OPA-Envoy's input from the protojson encoding of an
// envoy.service.auth.v3.CheckRequest: the request itself (lowerCamelCase
// fields, header names lowercased) plus parsed_path (the path's segments,
// decoded, not normalized), parsed_query (name to values) and version.
func EnvoyInput(checkRequestJSON []byte) (ast.Value, error) {
	var in map[string]any
	dec := json.NewDecoder(bytes.NewReader(checkRequestJSON))
	dec.UseNumber()
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("policy: the check request: %w", err)
	}
	path := ""
	if attrs, ok := in["attributes"].(map[string]any); ok {
		if req, ok := attrs["request"].(map[string]any); ok {
			if h, ok := req["http"].(map[string]any); ok {
				path, _ = h["path"].(string)
				if hs, ok := h["headers"].(map[string]any); ok {
					low := make(map[string]any, len(hs))
					for k, v := range hs {
						low[strings.ToLower(k)] = v
					}
					h["headers"] = low
				}
			}
		}
	}
	parsedPath := []any{}
	parsedQuery := map[string]any{}
	if path != "" {
		u, err := url.Parse(path)
		if err != nil {
			return nil, fmt.Errorf("policy: the request path %q: %w", path, err)
		}
		for _, seg := range strings.Split(strings.TrimLeft(u.Path, "/"), "/") {
			parsedPath = append(parsedPath, seg)
		}
		for k, vs := range u.Query() {
			arr := make([]any, len(vs))
			for i, v := range vs {
				arr[i] = v
			}
			parsedQuery[k] = arr
		}
	}
	in["parsed_path"] = parsedPath
	in["parsed_query"] = parsedQuery
	in["version"] = map[string]any{"ext_authz": "v3", "encoding": "protojson"}
	return ast.InterfaceToValue(in)
}
