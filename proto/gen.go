// Package proto holds the .proto definitions of meshca's own APIs and the Go
// generated from them, which is committed. Regenerate with `make generate`
// (protoc 3.21 from Debian's protobuf-compiler, protoc-gen-go v1.36.12,
// protoc-gen-go-grpc v1.6.2); `make generate-check` fails if the committed
// code differs from what the .proto files generate.
package proto

//go:generate sh -c "protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative raftpb/*.proto clusterpb/*.proto operatorpb/*.proto nodepb/*.proto"
