// Command smoke is the smallest HTTP server for the kind tests (tests/kind): it answers every
// request with "modship-kind-smoke <hostname>". `smoke lookup NAME` prints NAME's addresses (the
// test's in-cluster DNS check). Built by tools/kind/build.sh into the local image
// modship.local/kind-smoke, which the test loads into the node with `kind load`.
//
// Two variables make it a stand-in for a revision in bench/kind.py (unset: as above):
//
//	SMOKE_DELAY       a Go duration ("8ms") every answer waits first: a model's service time, no CPU
//	SMOKE_FAIL_AFTER  a Go duration ("12s") after the process started from which every answer is a
//	                  500, except the probes (/readyz, /livez): a canary that starts failing after a
//	                  healthy warm-up while its pod stays Ready
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func duration(name string) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	return d
}

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
	delay, failAfter := duration("SMOKE_DELAY"), duration("SMOKE_FAIL_AFTER")
	started := time.Now()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		probe := r.URL.Path == "/readyz" || r.URL.Path == "/livez"
		if delay > 0 && !probe {
			time.Sleep(delay)
		}
		if failAfter > 0 && !probe && time.Since(started) >= failAfter {
			http.Error(w, "modship-kind-smoke "+host+" failing (SMOKE_FAIL_AFTER)", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "modship-kind-smoke %s\n", host)
	})
	if err := http.ListenAndServe(":8080", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
