package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

// groupCommand is a command that only holds subcommands: alone it prints
// its help, and an unknown subcommand is a usage error.
func groupCommand(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

func (a *app) newOperatorCommand() *cobra.Command {
	return groupCommand("operator", "Cluster operations: Raft membership and snapshots",
		groupCommand("raft", "Raft peers and snapshots of the replicated state",
			a.newRaftListPeersCommand(),
			a.newRaftAddVoterCommand(),
			a.newRaftRemovePeerCommand(),
			groupCommand("snapshot", "Save and restore the replicated state",
				a.newSnapshotSaveCommand(),
				a.newSnapshotRestoreCommand(),
			),
		),
	)
}

// opLong is the paragraph every operator command's help ends with.
const opLong = `

The server is reached through --addr unix:///path/admin.sock, else
$MESHCA_ADDR, else the admin socket in the default data directory. From
another host, --addr host:port reaches a server started with --admin-addr,
over mutual TLS: give your admin X509-SVID (--admin-cert, --admin-key; one
of the server's --admin-id) and the trust bundle (--trust-bundle).`

// peerReport is one Raft peer as list-peers prints it.
type peerReport struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

func (a *app) newRaftListPeersCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "list-peers",
		Short: "List the servers of the Raft configuration",
		Long: `list-peers prints the Raft configuration as the server sees it: each peer's
node ID, Raft address, suffrage (Voter, Nonvoter) and whether it leads.` + opLong,
		Args: cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.RaftListPeers(ctx, &operatorpb.RaftListPeersRequest{})
		if err != nil {
			return c.callError("list Raft peers", o, err)
		}
		peers := make([]peerReport, 0, len(resp.Peers))
		for _, p := range resp.Peers {
			peers = append(peers, peerReport{ID: p.Id, Address: p.Address, Suffrage: p.Suffrage, Leader: p.Leader})
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Peers []peerReport `json:"peers"`
			}{peers})
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER")
		for _, p := range peers {
			leader := "-"
			if p.Leader {
				leader = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.ID, p.Address, p.Suffrage, leader)
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		return nil
	})
	return cmd
}

func (a *app) newRaftAddVoterCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "add-voter ID RAFT-ADDR",
		Short: "Add a server to the Raft configuration as a voter",
		Long: `add-voter adds the server ID, listening for Raft at RAFT-ADDR (host:port), to
the Raft configuration as a voter. The server must already have an identity
of this cluster: a new server normally joins with "meshca server --join", which
adds it itself; add-voter is for putting back a server that was removed.` + opLong,
		Args: cobra.ExactArgs(2),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if err := checkTimeout(o); err != nil {
			return err
		}
		id, addr := args[0], args[1]
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		if _, err := c.RaftAddVoter(ctx, &operatorpb.RaftAddVoterRequest{Id: id, Address: addr}); err != nil {
			return c.callError("add voter "+id, o, err)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, peerReport{ID: id, Address: addr, Suffrage: "Voter"})
		}
		fmt.Fprintf(a.stdout, "added %s at %s to the Raft configuration as a voter\n", id, addr)
		return nil
	})
	return cmd
}

func (a *app) newRaftRemovePeerCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "remove-peer ID",
		Short: "Remove a server from the Raft configuration",
		Long: `remove-peer removes the server ID from the Raft configuration and from the
cluster's list of servers. Use it for a server that is gone for good; a
server that is only down comes back by itself when restarted.` + opLong,
		Args: cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if err := checkTimeout(o); err != nil {
			return err
		}
		id := args[0]
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		if _, err := c.RaftRemovePeer(ctx, &operatorpb.RaftRemovePeerRequest{Id: id}); err != nil {
			return c.callError("remove peer "+id, o, err)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Removed string `json:"removed"`
			}{id})
		}
		fmt.Fprintf(a.stdout, "removed %s from the Raft configuration\n", id)
		return nil
	})
	return cmd
}

// snapshotReport is what snapshot save and restore print.
type snapshotReport struct {
	File      string `json:"file"`
	Bytes     int64  `json:"bytes"`
	StateHash string `json:"state_hash,omitempty"`
}

func (a *app) newSnapshotSaveCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "save FILE",
		Short: "Save a snapshot of the replicated state to FILE",
		Long: `save writes a snapshot of the cluster's replicated state, as of a linearizable
read (every write acknowledged before the command started is in it), to FILE
(mode 0600). The file appears whole or not at all: it is written beside FILE
under a temporary name, synced, then renamed. An existing FILE is replaced.

The snapshot holds the trust domain's root keys, sealed under the cluster's
key-encryption key: keep it as carefully as the KEK itself, and apart from it.` + opLong,
		Args: cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if err := checkTimeout(o); err != nil {
			return err
		}
		file, err := filepath.Abs(args[0])
		if err != nil {
			return fmt.Errorf("snapshot file %s: %w", args[0], err)
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		stream, err := c.SnapshotSave(ctx, &operatorpb.SnapshotSaveRequest{})
		if err != nil {
			return c.callError("save snapshot", o, err)
		}
		n, err := writeFileAtomic(file, func(w io.Writer) (int64, error) {
			var n int64
			for {
				chunk, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return n, nil
				}
				if err != nil {
					return n, c.callError("save snapshot", o, err)
				}
				k, err := w.Write(chunk.Data)
				n += int64(k)
				if err != nil {
					return n, fmt.Errorf("write snapshot: %w", err)
				}
			}
		})
		if err != nil {
			return err
		}
		r := snapshotReport{File: file, Bytes: n}
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		fmt.Fprintf(a.stdout, "saved snapshot to %s (%d bytes)\n", r.File, r.Bytes)
		return nil
	})
	return cmd
}

// writeFileAtomic creates file (mode 0600) with what fill writes, so that it
// appears whole or not at all: fill writes a temporary file beside it,
// which is synced and renamed over file, and the directory synced. It
// returns the number of bytes written. An empty result is an error.
func writeFileAtomic(file string, fill func(io.Writer) (int64, error)) (n int64, err error) {
	dir := filepath.Dir(file)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("create snapshot file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(modePrivate); err != nil {
		return 0, fmt.Errorf("create snapshot file: %w", err)
	}
	if n, err = fill(tmp); err != nil {
		return n, err
	}
	if n == 0 {
		return 0, errors.New("save snapshot: the server sent an empty snapshot")
	}
	if err := tmp.Sync(); err != nil {
		return n, fmt.Errorf("sync snapshot file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return n, fmt.Errorf("close snapshot file: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return n, fmt.Errorf("save snapshot file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		// The rename is durable once the directory is synced; a failure
		// here leaves the complete file in place, so it is not an error.
		d.Sync()
		d.Close()
	}
	return n, nil
}

// restoreChunk is the size of the chunks a snapshot is uploaded in.
const restoreChunk = 1 << 20

func (a *app) newSnapshotRestoreCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the cluster's replicated state with a saved snapshot",
		Long: `restore uploads the snapshot in FILE (made by "meshca operator raft snapshot
save") and replaces the whole cluster's replicated state with it: everything
written since the snapshot was taken is lost. The server verifies the
snapshot whole before anything changes, so a corrupt or truncated file is
refused and the state stays as it was. It prints the state hash of the
restored state, which "meshca status" then reports on every server.` + opLong,
		Args: cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		if err := checkTimeout(o); err != nil {
			return err
		}
		file, err := filepath.Abs(args[0])
		if err != nil {
			return fmt.Errorf("snapshot file %s: %w", args[0], err)
		}
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("snapshot file: %w", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil {
			return fmt.Errorf("snapshot file: %w", err)
		} else if !fi.Mode().IsRegular() || fi.Size() == 0 {
			return fmt.Errorf("snapshot file %s is not a regular, non-empty file", file)
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		stream, err := c.SnapshotRestore(ctx)
		if err != nil {
			return c.callError("restore snapshot", o, err)
		}
		var n int64
		buf := make([]byte, restoreChunk)
		for {
			k, rerr := f.Read(buf)
			if k > 0 {
				// io.EOF from Send means the server ended the call; its
				// status comes from CloseAndRecv below.
				if err := stream.Send(&operatorpb.SnapshotChunk{Data: buf[:k]}); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					return c.callError("restore snapshot", o, err)
				}
				n += int64(k)
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				return fmt.Errorf("read snapshot file: %w", rerr)
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return c.callError("restore snapshot "+file, o, err)
		}
		r := snapshotReport{File: file, Bytes: n, StateHash: resp.StateHash}
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		t := newTable(a.stdout, "")
		t.row("restored", fmt.Sprintf("%s (%d bytes)", r.File, r.Bytes))
		t.row("state hash", r.StateHash)
		return t.flush()
	})
	return cmd
}
