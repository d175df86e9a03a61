"""Events a mail provider posts to `campaign serve`: verified (`verify`), read (`events`), taken in (`take`)."""
