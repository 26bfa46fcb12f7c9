package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"

	"google.golang.org/grpc/codes"
)

// Error codes of the JSON errors (--output json): "usage" for a wrong
// command line, the snake_case name of the gRPC status code for a refusal
// by a server or an agent ("not_found", "already_exists",
// "invalid_argument", "failed_precondition", "permission_denied",
// "unavailable", "deadline_exceeded", ...), "error" for anything else.
const (
	codeUsage = "usage"
	codeError = "error"
)

// codedError is an error that carries the gRPC status code of the server
// or agent refusal it reports.
type codedError struct {
	msg  string
	code codes.Code
}

func (e *codedError) Error() string { return e.msg }

// codedErrorf returns an error with message format and the status code.
func codedErrorf(code codes.Code, format string, args ...any) error {
	return &codedError{msg: fmt.Sprintf(format, args...), code: code}
}

// errorCode is the JSON error code of err (see codeUsage).
func errorCode(err error, usage bool) string {
	if usage {
		return codeUsage
	}
	var ce *codedError
	if errors.As(err, &ce) {
		return snakeCase(ce.code.String())
	}
	return codeError
}

// snakeCase turns a gRPC code name (NotFound) into not_found.
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// jsonErrorReport is an error as --output json prints it on stderr.
type jsonErrorReport struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// writeJSONError writes err as one line of JSON.
func writeJSONError(w io.Writer, err error, usage bool) {
	b, _ := json.Marshal(jsonErrorReport{Error: err.Error(), Code: errorCode(err, usage)})
	fmt.Fprintf(w, "%s\n", b)
}

// wantsJSON reports whether args ask for --output json, for errors found
// before the flags were parsed (an unknown flag or command).
func wantsJSON(args []string) bool {
	for i, a := range args {
		if a == "--" {
			return false
		}
		if a == "--output=json" || a == "--output" && i+1 < len(args) && args[i+1] == "json" {
			return true
		}
	}
	return false
}
