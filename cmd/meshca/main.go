// Command meshca is the one meshca binary: the CA server, the node agent,
// `meshca dev` and the operator commands. Run `meshca --help` for what it
// does today.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
