// Command smoke is the smallest HTTP server for the kind smoke test (tests/kind): it answers every
// request with "modship-kind-smoke <hostname>". `smoke lookup NAME` prints NAME's addresses (the
// test's in-cluster DNS check). Built by tools/kind/build.sh into the local image
// modship.local/kind-smoke, which the test loads into the node with `kind load`.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "lookup" {
		addrs, err := net.LookupHost(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(strings.Join(addrs, " "))
		return
	}
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "modship-kind-smoke %s\n", host)
	})
	if err := http.ListenAndServe(":8080", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
