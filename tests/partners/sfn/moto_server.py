"""moto's Step Functions emulator for stepgate's tests and demo.

Usage: moto_server.py PORT [PARENT_PID]

Runs moto's server on 127.0.0.1:PORT with state-machine execution turned on, so executions
really run (RUNNING -> SUCCEEDED/FAILED) as they do on AWS. When PARENT_PID is given the
emulator exits once that process is gone: tests start it and may never stop it themselves.
"""
import os
import sys
import threading
import time



def exit_with_parent(parent: int) -> None:
    while True:
        try:
            os.kill(parent, 0)
        except OSError:
            os._exit(0)
        time.sleep(0.5)


def main() -> None:
    port = sys.argv[1]
    if len(sys.argv) > 2:
        threading.Thread(target=exit_with_parent, args=(int(sys.argv[2]),), daemon=True).start()
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.core.config import default_user_config

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(port), verbose=False)
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
