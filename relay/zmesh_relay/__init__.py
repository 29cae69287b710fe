"""Native relay, exit, SOCKS5 client and the `zmesh` command line."""
