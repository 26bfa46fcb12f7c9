package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// Destructive commands (cert revoke, node ban, node evict) say what they
// will do and ask before doing it, unless --yes. Without a terminal to ask
// on they refuse, unless --yes: a script must say it means it.

// destructiveOptions are the flags of a destructive command.
type destructiveOptions struct {
	yes, dryRun bool
}

func addDestructiveFlags(cmd *cobra.Command, d *destructiveOptions) {
	cmd.Flags().BoolVar(&d.yes, "yes", false, "do it without asking (needed without a terminal)")
	cmd.Flags().BoolVar(&d.dryRun, "dry-run", false, "show what would be done, and do nothing")
}

// errNotConfirmed is the answer "no" to a confirmation.
var errNotConfirmed = errors.New("not confirmed: nothing was changed")

// stdinTerminal reports whether r is a terminal.
func stdinTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) // not /dev/null, a character device too
}

// confirm asks on the terminal whether to go on with what (a sentence).
func (a *app) confirm(cmd *cobra.Command, d destructiveOptions, what string) error {
	if d.yes {
		return nil
	}
	in := a.stdin
	if in == nil {
		in = cmd.InOrStdin()
	}
	terminal := a.terminal
	if terminal == nil {
		terminal = stdinTerminal
	}
	if !terminal(in) {
		return usageErrorf("%s; refusing without a terminal to confirm on: pass --yes (or --dry-run to see the effect)", what)
	}
	fmt.Fprintf(a.stderr, "%s. Proceed? [y/N] ", what)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errNotConfirmed
}
