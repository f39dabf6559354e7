#!/bin/bash
# every 5 s: the largest resident python processes (pid, rss MB, command)
while true; do
  echo "$(date +%T) $(ps -eo pid,rss,args --sort=-rss | grep '[p]ython' | head -4 | awk '{printf "%s:%dMB:%s %s | ", $1, $2/1024, $4, $5}')"
  sleep 5
done
