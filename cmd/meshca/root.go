package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes of the meshca binary.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed
	exitUsage = 2 // the command line is wrong: unknown command or flag, bad or missing arguments
)

// Environment variables meshca reads.
const (
	envDataDir   = "MESHCA_DATA_DIR"
	envKEKFile   = "MESHCA_KEK_FILE"
	envAddr      = "MESHCA_ADDR"
	envJoinToken = "MESHCA_JOIN_TOKEN"
)

// app is one invocation of the binary: where it writes, the environment it
// reads, and the state its commands share. Commands never touch os.Stdout,
// os.Stderr or os.Getenv directly, so tests run them in-process.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	uid            int

	// stdin and terminal are where destructive commands ask for
	// confirmation and whether it is a terminal (nil: the command's input,
	// stdinTerminal); tests set them.
	stdin    io.Reader
	terminal func(io.Reader) bool

	// output is the value of the persistent --output flag.
	output outputFormat
	// running is set when a command's RunE starts: an error before that
	// (flag parsing, argument checks, required flags) is a usage error.
	running bool
}

// run executes the meshca command line args (without the program name) and
// returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	return runEnv(args, stdout, stderr, os.Getenv)
}

// runEnv is run with the environment read through getenv.
func runEnv(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return runContext(context.Background(), args, stdout, stderr, getenv)
}

// runContext is runEnv under ctx: cancelling ctx stops a long-running
// command (meshca server) as SIGINT or SIGTERM would, and cuts short the
// calls of operator commands.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv, uid: os.Getuid(), output: outputTable}
	return a.execute(ctx, args)
}

// usageError is a command-line mistake found by a command itself; it exits
// with exitUsage like the mistakes cobra finds.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// execute runs the command tree and maps its outcome to an exit code,
// printing errors as "meshca: <message>" on stderr, or with --output json
// as one line of JSON, {"error": "<message>", "code": "<code>"} (see
// errorCode).
func (a *app) execute(ctx context.Context, args []string) int {
	root := a.newRootCommand()
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ue *usageError
	usage := !a.running || errors.As(err, &ue)
	if a.output == outputJSON || wantsJSON(args) {
		writeJSONError(a.stderr, err, usage)
	} else {
		fmt.Fprintf(a.stderr, "meshca: %v\n", err)
		if usage {
			if cmd == nil {
				cmd = root
			}
			fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
	}
	if usage {
		return exitUsage
	}
	return exitError
}

// runE wraps a command's work so that execute can tell its errors (exit 1)
// from the usage errors cobra reports before it (exit 2).
func (a *app) runE(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a.running = true
		return f(cmd, args)
	}
}

const rootLong = `meshca is a certificate authority and workload-identity service for zero-trust
service meshes and "VPN over TLS" tunnels, in the style of SPIRE.

A Raft-replicated cluster of meshca servers holds each trust domain's CA: a
10-year root and short-lived intermediates per signature profile, ECDSA (P-256,
ECDSA-SHA256) or SM2 (SM2-with-SM3, GM/T); a trust domain may run both. Node
agents attest to the servers, attest the workloads on their node, and give each
workload a 24-hour SPIFFE X.509 certificate (X509-SVID), renewed at half-life,
whose private key never leaves the node. Certificates, trust bundles and CRLs
stream to proxies and tunnel endpoints over Envoy's SDS API, with OPA
authorization policy alongside them; operators rotate and revoke through this
CLI.

What works today:

  meshca dev              run a single-node server and agent, with an X509-SVID for you
  meshca server           run a CA server: bootstrap a Raft cluster or join one
  meshca agent            run a node agent: attest, fetch and renew SVIDs, serve the Workload API
  meshca workload fetch   fetch this process's X509-SVIDs from the Workload API into files
  meshca entry            create, list, show, update and delete registration entries
  meshca node             list and show the attested node agents
  meshca token create     make a single-use join token for a server or an agent
  meshca status           show a server's Raft state, leader and state hash
  meshca operator raft    list, add and remove Raft peers; save and restore snapshots
  meshca x509 mint        mint an X509-SVID into a directory, through a server or offline
  meshca cert list        list issued certificates (PostgreSQL history, or the Raft ledger)
  meshca audit list       list audit events: decisions and operator commands
  meshca policy           the OPA issuance policy, and signed OPA authorization bundles
  meshca bundle show      the OPA bundle verification key (--opa-key)
  meshca tunnel           an mTLS tunnel endpoint fed by the agent's SDS and OPA bundles

Operator commands reach a server through its admin Unix socket: --addr
unix:///path/admin.sock or $MESHCA_ADDR (default: the socket in the default
data directory), or from another host --addr host:port over mutual TLS with an
admin X509-SVID (servers started with --admin-addr).

CA private keys are sealed at rest under a key-encryption key (KEK) read from
--kek-file or $MESHCA_KEK_FILE. Without one, dev, offline x509 mint and a
bootstrapping server keep a KEK in the data directory, next to the keys it protects: that is
for development only. Every server of a cluster needs the same KEK.

Every command takes --output table|json. With --output json, errors are JSON
too, one line on standard error: {"error": "<message>", "code": "<code>"},
the code "usage" for a wrong command line, the gRPC status of a server's
refusal in snake_case ("not_found", "already_exists", "invalid_argument",
"failed_precondition", "permission_denied", "unavailable", ...), or "error".`

// newRootCommand builds the command tree of one invocation.
func (a *app) newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "meshca",
		Short:         "SPIFFE workload-identity certificate authority (ECDSA and SM2)",
		Long:          rootLong,
		SilenceErrors: true, // execute prints them
		SilenceUsage:  true, // a usage error prints a hint, a runtime error only itself
		CompletionOptions: cobra.CompletionOptions{
			HiddenDefaultCmd: true,
		},
	}
	root.PersistentFlags().Var(&a.output, "output", "output format: table or json")
	root.AddCommand(a.newDevCommand(), a.newX509Command(), a.newServerCommand(), a.newAgentCommand(),
		a.newWorkloadCommand(), a.newSDSCommand(), a.newStatusCommand(), a.newTokenCommand(), a.newEntryCommand(),
		a.newNodeCommand(), a.newAuthorityCommand(), a.newOperatorCommand(), a.newAdminCommand())
	root.AddCommand(a.newBenchCommand())
	root.AddCommand(a.newAuditCommand(), a.newCertCommand())    // issue 15: history queries
	root.AddCommand(a.newCRLCommand())                          // issue 13
	root.AddCommand(a.newPolicyCommand(), a.newBundleCommand()) // issue 12
	root.AddCommand(a.newTunnelCommand())                       // issue 14
	return root
}
