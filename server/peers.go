package server

import (
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// checkNotLastVoter refuses to remove id when it is the only voter of the
// Raft configuration servers: nothing could elect a leader afterwards, and
// Raft itself would refuse with "need at least one voter in configuration".
func checkNotLastVoter(servers []raft.Server, id string) error {
	voters, isVoter := 0, false
	for _, sv := range servers {
		if sv.Suffrage == raft.Voter {
			voters++
			isVoter = isVoter || string(sv.ID) == id
		}
	}
	if isVoter && voters == 1 {
		return status.Errorf(codes.FailedPrecondition, "%s is the only voter of the cluster: without it no server could be elected leader; join another server first (meshca server --join), then remove this one", id)
	}
	return nil
}
