// Command agentdouble is a TEST DOUBLE of dstack's guest agent (Rust, pinned
// revision 40eaf35e = v0.5.11), for the boot test in internal/guesttest only.
// The test builds it and installs it as /usr/bin/dstack-guest-agent through
// the guest agent recipe's do_install.
//
// It honours the agent's contract with systemd and the runtime: started as
//
//	dstack-guest-agent --watchdog -c /dstack/agent.json
//
// it reads the configuration dstack-util setup wrote (and fails without it),
// takes the two sockets dstack-guest-agent.socket passes (LISTEN_FDS: index 0
// /run/dstack.sock, index 1 /run/tappd.sock; no other way to get them), serves
// HTTP on both (every path answers a JSON object naming the double, the
// socket and the configured data disks), tells systemd READY=1 once both
// serve and pings the watchdog at half its period. Nothing of the real API
// (quotes, keys, logs) is implemented.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

type config struct {
	Default struct {
		Core struct {
			PccsURL   *string  `json:"pccs_url"`
			DataDisks []string `json:"data_disks"`
		} `json:"core"`
	} `json:"default"`
}

func main() {
	watchdog := flag.Bool("watchdog", false, "notify systemd and ping its watchdog")
	cfgPath := flag.String("c", "", "configuration file (agent.json)")
	flag.Parse()
	if err := run(*cfgPath, *watchdog); err != nil {
		fmt.Fprintf(os.Stderr, "dstack-guest-agent-double: error: %v\n", err)
		os.Exit(1)
	}
}

func run(cfgPath string, watchdog bool) error {
	if cfgPath == "" {
		return fmt.Errorf("-c <agent.json> is required")
	}
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	var cfg config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", cfgPath, err)
	}
	if len(cfg.Default.Core.DataDisks) == 0 {
		return fmt.Errorf("%s: no default.core.data_disks", cfgPath)
	}
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return fmt.Errorf("no sockets from systemd (LISTEN_PID %q, pid %d): start me through dstack-guest-agent.socket", os.Getenv("LISTEN_PID"), os.Getpid())
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n != 2 {
		return fmt.Errorf("LISTEN_FDS=%q: want the 2 sockets of dstack-guest-agent.socket", os.Getenv("LISTEN_FDS"))
	}
	names := []string{"dstack.sock", "tappd.sock"}
	errc := make(chan error, 2)
	var paths []string
	for i, name := range names {
		f := os.NewFile(uintptr(3+i), name)
		l, err := net.FileListener(f)
		if err != nil {
			return fmt.Errorf("socket %d (%s): %w", i, name, err)
		}
		f.Close()
		paths = append(paths, l.Addr().String())
		name := name
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{
				"double":     "dstack-guest-agent-double",
				"socket":     name,
				"path":       r.URL.Path,
				"data_disks": cfg.Default.Core.DataDisks,
			})
		})
		go func() { errc <- http.Serve(l, mux) }()
	}
	fmt.Printf("dstack-guest-agent-double: serving %s and %s (config %s, data disks %v)\n", paths[0], paths[1], cfgPath, cfg.Default.Core.DataDisks)
	if watchdog {
		if err := notify("READY=1"); err != nil {
			return err
		}
		if usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64); err == nil && usec > 0 {
			go func() {
				for range time.Tick(time.Duration(usec) * time.Microsecond / 2) {
					if err := notify("WATCHDOG=1"); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
	}
	return <-errc
}

// notify sends one sd_notify message to systemd.
func notify(msg string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return fmt.Errorf("--watchdog but no NOTIFY_SOCKET (not started by systemd with Type=notify?)")
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", msg, err)
	}
	return nil
}
