-- wrk: every request is the same small chat completion (bench/wrk_load.py)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "cloud", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}'
