#!/bin/sh
# user-data for the tiny guest: runs once at boot; the guest serves /www on port 80.
echo "hello from user-data on $(hostname)" > /www/hello.txt
